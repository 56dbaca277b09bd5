"""`python -m bench.chaos`: the command. Parses the arguments, runs a campaign, prints the checker's verdicts;
the exit status is 0 only if every invariant holds."""

import argparse
import json
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench.chaos
from bench.chaos.campaign import Campaign


def print_verdicts(report: dict[str, Any]) -> None:
    """The campaign in one line, then each invariant's verdict with its figures, what broke it and what excused."""
    figures, heal = report["figures"], report["heal"]
    print(f"\nseed {report['seed']}: {figures['operations']} operations, {figures['requests']} requests, "
          f"{figures['accepted_jobs']} jobs accepted in {figures['accepted_batches']} batches; "
          f"{figures['forward_pass_images_logged']} images forward-passed; faults {report['faults']['counts']}; "
          f"heal {heal['heal_seconds']} s (bound {heal['heal_bound_seconds']} s)")
    print(f"worst recovery per fault kind (s): {report['faults']['worst_recovery_seconds']}")
    for verdict in report["verdicts"]:
        print(f"[{'holds' if verdict['holds'] else 'VIOLATED'}] {verdict['invariant']}: "
              f"{json.dumps(verdict['figures'])}")
        for line in verdict["offending"][:20]:
            print(f"    offending: {line}")
        if len(verdict["offending"]) > 20:
            print(f"    ... and {len(verdict['offending']) - 20} more (see the report)")
        for line in verdict["notes"][:10]:
            print(f"    note: {line}")
    print(f"\n{'every invariant holds' if report['holds'] else 'SOME INVARIANT IS VIOLATED'} (seed {report['seed']}; "
          f"replay: {report['replay']})")


def main(argv: list[str] | None = None) -> int:
    # prog: run as a package, argv[0] is .../bench/chaos/__main__.py, which says nothing of how to run it.
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=bench.chaos.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the clients and the nemesis run")
    parser.add_argument("--seed", type=int, default=None, help="replay a campaign (default: a random seed)")
    parser.add_argument("--report", type=Path, default=None, help="write the report and history as JSON here")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for Redis' files and the logs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(f"seed {seed}", flush=True)
    # `kill PID` stops the campaign as Ctrl-C does: through the `finally` below, which stops every process started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="pneuradnet-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(seed, args.minutes, folder)
    try:
        report = campaign.run()
    except KeyboardInterrupt:
        print(f"interrupted (seed {seed}): stopping every process the campaign started", flush=True)
        return 130
    finally:
        campaign.close()
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, default=str))
    print_verdicts(report)
    return 0 if report["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
