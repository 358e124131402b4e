"""NeMo Canary state dict <-> :class:`~speech_ed.models.aed.AEDModel` state dict, by an explicit key table.

Every NeMo tensor is either copied to one of ours (1x1 Conv1d kernels become Linear weights), checked
against the value our model computes itself (STFT window, mel filters, fixed decoder positions, the output
weight tied to the token embedding), or, for tensors inference never reads (the decoder's token-type
embedding), kept aside so an export can write them back. Anything else is an error naming the key.
"""

from __future__ import annotations

import torch

from speech_ed.models.dims import ModelDims
from speech_ed.nemo.archive import NemoFormatError

# NeMo ConformerLayer sub-module -> ours (ConformerBlock); (name, has_bias)
_ENCODER_LAYER = [
    ("norm_feed_forward1", "ff1.norm", "norm"), ("feed_forward1.linear1", "ff1.up", "linear"),
    ("feed_forward1.linear2", "ff1.down", "linear"), ("norm_self_att", "attn_norm", "norm"),
    ("self_attn.linear_q", "attn.query", "linear"), ("self_attn.linear_k", "attn.key", "linear"),
    ("self_attn.linear_v", "attn.value", "linear"), ("self_attn.linear_out", "attn.out", "linear"),
    ("norm_conv", "conv.norm", "norm"), ("conv.pointwise_conv1", "conv.pointwise_in", "conv1x1"),
    ("conv.depthwise_conv", "conv.depthwise", "linear"), ("conv.pointwise_conv2", "conv.pointwise_out", "conv1x1"),
    ("norm_feed_forward2", "ff2.norm", "norm"), ("feed_forward2.linear1", "ff2.up", "linear"),
    ("feed_forward2.linear2", "ff2.down", "linear"), ("norm_out", "out_norm", "norm"),
]
_DECODER_LAYER = [
    ("layer_norm_1", "self_norm"), ("first_sub_layer.query_net", "self_attn.query"),
    ("first_sub_layer.key_net", "self_attn.key"), ("first_sub_layer.value_net", "self_attn.value"),
    ("first_sub_layer.out_projection", "self_attn.out"), ("layer_norm_2", "cross_norm"),
    ("second_sub_layer.query_net", "cross_attn.query"), ("second_sub_layer.key_net", "cross_attn.key"),
    ("second_sub_layer.value_net", "cross_attn.value"), ("second_sub_layer.out_projection", "cross_attn.out"),
    ("layer_norm_3", "ff.norm"), ("third_sub_layer.dense_in", "ff.up"), ("third_sub_layer.dense_out", "ff.down"),
]
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
DEC = "transf_decoder._decoder"
EMB = "transf_decoder._embedding"
HEAD = "log_softmax.mlp.layer0"


def key_table(dims: ModelDims, use_bias: bool = True) -> list[tuple[str, str, str]]:
    """``(nemo_key, our_key, kind)`` for every copied tensor; kind 'copy', 'conv1x1' (NeMo (O, I, 1) <->
    our (O, I)) or 'zero_bias' (a bias NeMo does not have: ``use_bias`` false; ours is zero)."""
    table: list[tuple[str, str, str]] = [("encoder.pre_encode.out.weight", "subsampling.out.weight", "copy"),
                                         ("encoder.pre_encode.out.bias", "subsampling.out.bias", "copy")]
    for i in range(dims.subsampling_factor.bit_length() - 1):
        if dims.subsampling == "conv2d":
            convs = [(f"encoder.pre_encode.conv.{2 * i}", f"subsampling.stages.{i}.0")]
        elif i == 0:
            convs = [("encoder.pre_encode.conv.0", "subsampling.stages.0.0")]
        else:  # depthwise then pointwise, after conv.0 and its ReLU: NeMo indices 3i - 1 and 3i
            convs = [(f"encoder.pre_encode.conv.{3 * i - 1}", f"subsampling.stages.{i}.0"),
                     (f"encoder.pre_encode.conv.{3 * i}", f"subsampling.stages.{i}.1")]
        for nemo, ours in convs:
            table += [(f"{nemo}.weight", f"{ours}.weight", "copy"), (f"{nemo}.bias", f"{ours}.bias", "copy")]
    for n in range(dims.num_encoder_layers):
        pre, ours = f"encoder.layers.{n}", f"encoder.blocks.{n}"
        for nemo_name, our_name, kind in _ENCODER_LAYER:
            weight_kind = "conv1x1" if kind == "conv1x1" else "copy"
            table.append((f"{pre}.{nemo_name}.weight", f"{ours}.{our_name}.weight", weight_kind))
            bias_kind = "copy" if use_bias or kind == "norm" else "zero_bias"
            table.append((f"{pre}.{nemo_name}.bias", f"{ours}.{our_name}.bias", bias_kind))
        names = ("weight", "bias") + (_BN_STATS if dims.conv_norm == "batch" else ())
        table += [(f"{pre}.conv.batch_norm.{x}", f"{ours}.conv.conv_norm.{x}", "copy") for x in names]
        if dims.pos_enc == "rel":
            table += [(f"{pre}.self_attn.linear_pos.weight", f"{ours}.attn.linear_pos.weight", "copy"),
                      (f"{pre}.self_attn.pos_bias_u", f"{ours}.attn.pos_bias_u", "copy"),
                      (f"{pre}.self_attn.pos_bias_v", f"{ours}.attn.pos_bias_v", "copy")]
    if dims.encoder_dim != dims.decoder_dim:
        table += [("encoder_decoder_proj.weight", "projection.weight", "copy"),
                  ("encoder_decoder_proj.bias", "projection.bias", "copy")]
    table += [(f"{EMB}.token_embedding.weight", "decoder.embed.weight", "copy"),
              (f"{EMB}.layer_norm.weight", "decoder.embed_norm.weight", "copy"),
              (f"{EMB}.layer_norm.bias", "decoder.embed_norm.bias", "copy"),
              (f"{DEC}.final_layer_norm.weight", "decoder.norm.weight", "copy"),
              (f"{DEC}.final_layer_norm.bias", "decoder.norm.bias", "copy"),
              (f"{HEAD}.bias", "decoder.output.bias", "copy")]
    if dims.decoder_pos == "learned":
        table.append((f"{EMB}.position_embedding.weight", "decoder.pos", "copy"))
    for n in range(dims.num_decoder_layers):
        for nemo_name, our_name in _DECODER_LAYER:
            for x in ("weight", "bias"):
                table.append((f"{DEC}.layers.{n}.{nemo_name}.{x}", f"decoder.layers.{n}.{our_name}.{x}", "copy"))
    return table


def checked_buffers(dims: ModelDims) -> list[tuple[str, str]]:
    """``(nemo_key, our_tensor)`` pairs that our model computes itself; the import checks they agree."""
    pairs = [("preprocessor.featurizer.window", "frontend.window"), ("preprocessor.featurizer.fb", "frontend.mel_fb"),
             (f"{HEAD}.weight", "decoder.output.weight")]
    if dims.decoder_pos != "learned":
        pairs.append((f"{EMB}.position_embedding.pos_enc", "decoder.pos"))
    return pairs


def unused_keys(dims: ModelDims) -> list[str]:
    """NeMo tensors that inference never reads: kept aside by the import, written back by the export."""
    return [f"{EMB}.token_type_embedding.weight"]


def to_ours(nemo_sd: dict[str, torch.Tensor], dims: ModelDims, use_bias: bool = True):
    """Our state dict from NeMo's. Returns ``(state_dict, unused)``: unused NeMo tensors by name.

    Raises:
        NemoFormatError: a tensor is missing, has another shape than the config implies, or is left over.
    """
    from speech_ed.models.aed import AEDModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AEDModel(dims).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for nemo, ours, kind in key_table(dims, use_bias):
        if kind == "zero_bias":
            out[ours] = torch.zeros(shapes[ours])
            continue
        if nemo not in nemo_sd:
            raise NemoFormatError(f"weights: {nemo} is missing (the config implies it)")
        t = nemo_sd[nemo]
        if kind == "conv1x1":
            if t.dim() != 3 or t.shape[-1] != 1:
                raise NemoFormatError(f"weights: {nemo} has shape {tuple(t.shape)}, expected (out, in, 1)")
            t = t[..., 0]
        if t.shape != shapes[ours]:
            raise NemoFormatError(f"weights: {nemo} has shape {tuple(t.shape)}; the config implies "
                                  f"{tuple(shapes[ours])}")
        out[ours] = t.detach().clone()
    out["decoder.output.weight"] = out["decoder.embed.weight"]  # tied (NeMo ties the head to the embedding)
    known = {n for n, _, _ in key_table(dims, use_bias)} | {n for n, _ in checked_buffers(dims)}
    unused = {k: nemo_sd[k].detach().clone() for k in unused_keys(dims) if k in nemo_sd}
    left = sorted(set(nemo_sd) - known - set(unused))
    if left:
        raise NemoFormatError(f"weights: {left[0]} has no counterpart in this model ({len(left)} such tensors: "
                              f"{left[:5]})")
    return out, unused


def check_computed(model, nemo_sd: dict[str, torch.Tensor], dims: ModelDims, atol: float = 1e-6) -> dict:
    """Compare what our model computes with NeMo's stored copies; returns the max abs difference per key.

    Raises:
        NemoFormatError: a difference above ``atol`` (the checkpoint was made with other settings).
    """
    ours = dict(model.named_buffers()) | dict(model.named_parameters(remove_duplicate=False))
    diffs = {}
    for nemo, name in checked_buffers(dims):
        if nemo not in nemo_sd:
            raise NemoFormatError(f"weights: {nemo} is missing")
        theirs = nemo_sd[nemo].float()
        mine = ours[name].detach().float()
        if name == "frontend.mel_fb":
            mine = mine.T[None]  # NeMo stores (1, n_mels, n_fft/2 + 1)
        if name == "decoder.pos":
            mine = mine[: theirs.shape[0]]
            if theirs.shape[0] < dims.max_decoder_positions:
                raise NemoFormatError(f"weights: {nemo} has {theirs.shape[0]} positions, fewer than "
                                      f"max_sequence_length={dims.max_decoder_positions}")
        if mine.shape != theirs.shape:
            raise NemoFormatError(f"weights: {nemo} has shape {tuple(theirs.shape)}, ours {tuple(mine.shape)}")
        diffs[nemo] = float((mine - theirs).abs().max()) if mine.numel() else 0.0
        if diffs[nemo] > atol:
            raise NemoFormatError(f"weights: {nemo} differs from what the config implies by {diffs[nemo]:.2e} "
                                  f"(> {atol:g}): the model was made with settings this importer does not know")
    return diffs


def to_nemo(model, dims: ModelDims, unused: dict[str, torch.Tensor], use_bias: bool = True):
    """NeMo's state dict from our model (the inverse of :func:`to_ours`, computed tensors included)."""
    sd = model.state_dict()
    ours = dict(model.named_buffers()) | sd
    out = {}
    for nemo, name, kind in key_table(dims, use_bias):
        if kind == "zero_bias":
            if bool(sd[name].any()):
                raise NemoFormatError(f"{name} is not zero but the NeMo config has use_bias=false")
            continue
        t = sd[name].detach().cpu()
        out[nemo] = t[..., None].clone() if kind == "conv1x1" else t.clone()
    for nemo, name in checked_buffers(dims):
        t = ours[name].detach().cpu().float()
        out[nemo] = t.T[None].clone() if name == "frontend.mel_fb" else t.clone()
    out.update({k: v.clone() for k, v in unused.items()})
    return out
