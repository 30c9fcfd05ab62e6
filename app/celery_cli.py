"""Celery's own command line, without the interactive REPL no Dockyard process uses.

``python -m app.celery_cli -A app.celery_app:celery worker …`` takes the same arguments as
``celery`` and runs the same code, except that ``celery amqp repl`` is not there:
celery.bin.celery imports every subcommand, and ``amqp`` registers its REPL through
click_repl, which loads prompt_toolkit: ~8 MiB in every worker and beat that never reads a
prompt (docs/benchmarks.md, idle memory). ``make run`` starts its workers this way.
"""

from __future__ import annotations

import sys
import types


def _without_repl() -> None:
    """Give celery.bin.amqp a click_repl whose ``register_repl`` adds nothing."""
    if "click_repl" in sys.modules:
        return
    stand_in = types.ModuleType("click_repl", "click_repl left out by app.celery_cli")
    stand_in.register_repl = lambda group, name="repl": None  # type: ignore[attr-defined]
    sys.modules["click_repl"] = stand_in


def main() -> None:
    _without_repl()
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()
