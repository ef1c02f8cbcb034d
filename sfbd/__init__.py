# Stochastic Forward-Backward Deconvolution (Lu, Wu, Yu, ICML 2025): noisy
# observation sets, backward sampling from an observation, update rounds, the
# memorisation check and the report of a run, and the embedded demo.
