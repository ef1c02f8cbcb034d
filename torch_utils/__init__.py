# PyTorch utilities: data-only pickles, distributed set-up, training statistics, misc.
