# Stochastic Forward-Backward Deconvolution (Lu, Wu, Yu, ICML 2025), the method: noisy observation
# sets, backward sampling from an observation (backward.py) and over a set (denoise_set.py), Online
# SFBD's buffer (online.py), the cost accounting, presets and the memorisation check. The update rounds,
# the report and the demo are `python -m sfbd.rounds`, `sfbd.report` and `sfbd.demo` (command lines
# over tools/rounds.py, tools/report.py and tools/demo.py).
