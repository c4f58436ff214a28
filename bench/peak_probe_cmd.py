"""``python -m bench.peak_probe_cmd CODE`` runs CODE (used by the tests of :mod:`bench.peak`)."""

import sys

if __name__ == "__main__":
    exec(compile(sys.argv[1], "<probe>", "exec"))
