"""Synthetic audio-less cuts with known durations and token counts."""

import numpy as np
from lhotse import CutSet, MonoCut, SupervisionSegment


def synthetic_cuts(n: int = 600, seed: int = 0):
    """``(cuts, tokens_by_id)``: durations 0.5-16 s, about 3 tokens/s plus a 6-token prompt."""
    rng = np.random.default_rng(seed)
    durations = np.round(rng.gamma(3.0, 2.0, size=n).clip(0.5, 16.0), 2)
    tokens = (np.round(durations * rng.normal(3.0, 0.5, size=n)).clip(1) + 6).astype(int)
    cuts, by_id = [], {}
    for i, (d, t) in enumerate(zip(durations.tolist(), tokens.tolist())):
        cid = f"c{i:05d}"
        sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=d, text="x", language="en",
                                 custom={"task": "transcribe"})
        cuts.append(MonoCut(id=cid, start=0.0, duration=d, channel=0, supervisions=[sup]))
        by_id[cid] = t
    return CutSet.from_cuts(cuts), by_id
