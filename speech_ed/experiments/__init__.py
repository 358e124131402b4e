"""Experiments built on the library: the random vs 1D vs 2D efficiency study, its memory budgets, dev curve and report."""
