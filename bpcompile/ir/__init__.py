"""The program IR: target-neutral kernels (``program.py``) and the bar-notation equations that annotate them (``equations.py``)."""
