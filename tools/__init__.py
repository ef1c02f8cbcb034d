# The libraries of the command-line tools: what a tool's script and another tool or a test share (option
# tables, one train.py run, the rounds, the report, the demo, the benchmark). Above sfbd/; only the scripts
# and the `python -m` entry points import it.
