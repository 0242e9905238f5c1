"""The `bullwait` command line: a thin shell over the library (the library never imports it)."""

import sys


def main() -> None:
    """The `bullwait` command. An unsupported bullmq-py or redis-py is refused while the CLI is
    imported (bullwait.engine checks them): one line and exit code 2, as for any bad setting."""
    from bullwait.errors import UnsupportedClientVersion

    try:
        from bullwait.cli.main import run
    except UnsupportedClientVersion as exc:
        print(f"bullwait: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    run()
