# The libraries of the command-line tools: what a tool's script and another tool or a test share (option
# tables, setting a step up, the benchmark). Above sfbd/; only the scripts and `python -m` entry points import it.
