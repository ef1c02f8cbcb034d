#!/usr/bin/env bash
# CI: the oldest torch and numpy that requirements.txt declares, checked on the tests that exercise
# torch's API (networks, persistence, samplers, the fast path's pieces, training runs stopped and
# resumed on both paths).
#
#   bash .ci/min_versions.sh prepare DIR   # a venv in DIR with torch==<min>.* and numpy==<min>.*
#   bash .ci/min_versions.sh test DIR      # the subset of the tests in that venv
#
# .ci/run prepares and tests while the main tests run (the download and install are mostly network
# and disk time); the test step has its own pytest base directory, so that the two runs never clean up
# each other's temporary files. PyPI's Linux torch wheels are CUDA builds, so the venv also gets the nvidia-*
# libraries torch links against (about 2.5 GB); the other packages come from the system
# (--system-site-packages). Nothing here needs a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: min_versions.sh prepare|test DIR}"
dir="${2:?usage: min_versions.sh prepare|test DIR}"

minimum() {  # minimum PACKAGE -> the version after >= in requirements.txt
    sed -n "s/^$1>=\([0-9.]*\).*/\1/p" requirements.txt
}
torch_min="$(minimum torch)"
numpy_min="$(minimum numpy)"
[[ -n "$torch_min" && -n "$numpy_min" ]] || { echo "min_versions.sh: no torch>= or numpy>= in requirements.txt" >&2; exit 1; }

case "$mode" in
    prepare)
        python -m venv --system-site-packages "$dir"
        "$dir/bin/python" -m pip install -q --no-cache-dir --no-compile "torch==$torch_min.*" "numpy==$numpy_min.*"
        "$dir/bin/python" -c 'import numpy, torch; print(f"torch {torch.__version__}, numpy {numpy.__version__}")'
        ;;
    test)
        echo "Tests with the oldest declared versions: $("$dir/bin/python" -c 'import numpy, torch; print(f"torch {torch.__version__}, numpy {numpy.__version__}")')"
        # The help-text test imports every tool and so scipy, whose system version needs a newer numpy than
        # the minimum; it checks click's rendering, not torch or numpy, and runs in the main suite.
        "$dir/bin/python" -m pytest -q --basetemp="$dir/pytest-tmp" tests/test_networks.py tests/test_persistence.py \
            tests/test_sampler.py tests/test_fast.py 'tests/test_training.py::test_preempt_and_rerun_continues_exactly' \
            'tests/test_training.py::test_fast_path_resumes_exactly' \
            --deselect 'tests/test_sampler.py::test_sampler_option_help_in_every_tool'
        ;;
    *)
        echo "min_versions.sh: unknown mode $mode (prepare or test)" >&2
        exit 1
        ;;
esac
