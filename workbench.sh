#!/usr/bin/env bash
# The three commands of the README's quickstart.
#   ./workbench.sh demo [flant5 run options]   set up .venv, run the notebook chain on params/local-smoke.yaml
#   ./workbench.sh lab [--port N] [--no-browser] [jupyter lab options]
#                                              set up .venv, open JupyterLab on notebooks/ with the "Python (flant5)" kernel
#   ./workbench.sh test [pytest options]       set up .venv, run tests/ and then every notebook with nbval
#   ./workbench.sh setup                       only create/update .venv and register its Jupyter kernel
# Needs Python 3.11 (python3.11 on PATH, or PYTHON=/path/to/python3.11) and access to the package registries.
set -euo pipefail

cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.flant5-installed

setup() {
    # Tests that run ./workbench.sh lab set this: the venv is already in use, never reinstall it under them.
    if [ -n "${FLANT5_SKIP_SETUP:-}" ]; then return; fi
    if [ ! -x "$VENV/bin/python" ]; then
        if ! command -v "$PYTHON" >/dev/null 2>&1; then
            echo "workbench.sh: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
            exit 2
        fi
        echo "workbench.sh: creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the project's requirements changed since the last successful install.
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
        echo "workbench.sh: installing the project into $VENV (pinned by constraints.txt)"
        "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev]'
        # A kernelspec inside the venv that runs the venv's python: papermill, nbval and JupyterLab use it.
        "$VENV/bin/python" -m ipykernel install --sys-prefix --name flant5 --display-name "Python (flant5)" >/dev/null
        touch "$STAMP"
    fi
}

browser_setup() {
    # tests/workbench/test_run_page_browser.py screenshots a run page in headless Chromium; install Debian's package
    # when it is missing and we may (root with apt-get). Otherwise that test is skipped with the reason.
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "workbench.sh: installing chromium for the run-page browser test"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
            >/dev/null 2>&1 || echo "workbench.sh: could not install chromium; the browser test will be skipped" >&2
    fi
}

pytest_step() {
    # pytest exit 5 = "no tests collected" (e.g. a -k filter matched nothing here): not a failure of the suite.
    local rc=0
    "$VENV/bin/python" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "workbench.sh: no tests collected by: pytest $*" >&2
        rc=0
    fi
    return "$rc"
}

case "${1:-}" in
    demo)
        shift
        setup
        exec "$VENV/bin/flant5" run --params params/local-smoke.yaml --fresh "$@"
        ;;
    test)
        shift
        setup
        browser_setup
        rc=0
        pytest_step tests/ "$@" || rc=$?
        # Every notebook must still run with its defaults (the local-smoke values) from a clean run folder.
        rm -rf runs/nbval
        nb_rc=0
        pytest_step --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider notebooks/ "$@" || nb_rc=$?
        if [ "$rc" -ne 0 ] || [ "$nb_rc" -ne 0 ]; then
            echo "workbench.sh: FAILED (tests/: exit $rc, notebooks/: exit $nb_rc)" >&2
            exit $(( rc != 0 ? rc : nb_rc ))
        fi
        echo "workbench.sh: all tests and notebooks passed"
        ;;
    lab)
        shift
        setup
        # Loopback only; JupyterLab prints the URL with its token. The notebooks open on the "Python (flant5)" kernel
        # (their metadata names it; setup registered it inside .venv). --port, --no-browser, ... pass through.
        extra=()
        if [ "$(id -u)" = 0 ]; then  # a container shell: JupyterLab refuses root unless told
            echo "workbench.sh: running as root; passing --allow-root to JupyterLab (it still listens on 127.0.0.1 only)" >&2
            extra=(--allow-root)
        fi
        exec "$VENV/bin/jupyter" lab --ip=127.0.0.1 --ServerApp.root_dir=notebooks \
            --MappingKernelManager.default_kernel_name=flant5 "${extra[@]}" "$@"
        ;;
    setup)
        setup
        echo "workbench.sh: $VENV is ready ($("$VENV/bin/python" --version))"
        ;;
    *)
        echo "usage: ./workbench.sh demo|lab|test|setup [options]" >&2
        exit 2
        ;;
esac
