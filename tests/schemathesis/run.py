"""Runs the schemathesis command line (`python run.py run ...`).

Why not the `schemathesis` script: on CPython 3.11 (Debian 12's Python),
`ast.parse` can raise `SystemError: AST constructor recursion depth
mismatch` (CPython issue gh-106905) when Hypothesis parses a large source
file deep in a call stack to describe one of schemathesis's lambdas. The
description is only cosmetic, so such a failure is answered with the
placeholder Hypothesis uses when it cannot find a lambda's source.
"""

import sys

from hypothesis.internal import lambda_sources


def _guarded(describe):
    def description(f):
        try:
            return describe(f)
        except SystemError:
            return "lambda: <unknown>"

    return description


if sys.version_info < (3, 12):
    lambda_sources._lambda_description = _guarded(lambda_sources._lambda_description)

from schemathesis.cli import schemathesis  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "schemathesis"
    sys.exit(schemathesis())
