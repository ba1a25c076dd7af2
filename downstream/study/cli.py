"""``colorbench study create | serve | report``: the perceptual realism study (2AFC).

    colorbench study create --real photos/ --method zhang=colorized/ [--method other=dir/ ...] --out studies/s1
    colorbench study serve studies/s1 [--host 127.0.0.1] [--port 8000]
    colorbench study report studies/s1 [--out runs/realism-s1]

Bad input (a method folder missing photos, sizes that differ, a folder that is not a
study) raises ``StudyError`` (a ValueError), which ``colorbench`` prints as one line on
stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from downstream.study import StudyError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{create,serve,report}")

    c = sub.add_parser("create", help="build a study: pairs, sanity pairs, images and manifest.json",
                       description="Pair each ground-truth photo with each method's colorization of it "
                                   "(matched by file name without extension; sizes must agree).")
    c.add_argument("--real", required=True, type=Path, help="folder of ground-truth colour photos (searched recursively)")
    c.add_argument("--method", action="append", default=[], metavar="NAME=DIR",
                   help="a method's colorizations, one file per real photo (repeat for several methods); a "
                        "stochastic method's folder from 'colorize --samples N' (<name>_s<j>.png) gives one fake per "
                        "sample, each a separate condition of the design, pooled per method in the report")
    c.add_argument("--sample", type=int, default=None, metavar="J",
                   help="sampled method folders: use only sample J of each photo (0 = what colorize writes without "
                        "--samples) instead of every sample")
    c.add_argument("--out", required=True, type=Path, help="the new study folder (must not exist or be empty)")
    c.add_argument("--design", choices=("latin", "all"), default="latin",
                   help="latin (default): each rater sees every photo once, methods rotated over photos and raters, "
                        "so no one sees a photo twice (as in the paper); all: every rater judges every (photo, method) pair")
    c.add_argument("--photos", type=int, default=None,
                   help="use a random sample of this many photos (default: all); the paper showed each rater 40")
    c.add_argument("--sanity", type=int, default=4,
                   help="sanity pairs per rater (real vs R/B-swapped or hue-rotated colours); default 4 = one per ten "
                        "of the paper's 40 test pairs")
    c.add_argument("--practice", type=int, default=2,
                   help="practice pairs with feedback, shown first and never analysed (default 2; the paper used 10)")
    c.add_argument("--exposure", type=float, default=1.0,
                   help="seconds each pair is shown before it is hidden (default 1 = the paper's exposure)")
    c.add_argument("--max-side", type=int, default=256,
                   help="shrink images whose longer side exceeds this many pixels (default 256, the paper's "
                        "256x256 images; 0 keeps the original size)")
    c.add_argument("--dataset-name", default=None,
                   help="dataset field of the report's run records (default: the name of the --real folder); "
                        "use the name eval-color used so the realism column lands in the same table")
    c.add_argument("--consent", type=Path, default=None,
                   help="a text file with your own consent wording (blank lines separate paragraphs); "
                        "default: a short generic text")
    c.add_argument("--seed", type=int, default=0, help="seed of the photo sample, left/right sides and trial orders")

    s = sub.add_parser("serve", help="serve the study to raters (Flask app on waitress)")
    s.add_argument("study", type=Path)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 to let others "
                        "on the network take part; there is no login, so only on a network you trust)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one and prints it)")
    s.add_argument("--threads", type=int, default=8,
                   help="worker threads (default 8: each answer is a short SQLite write, so a few threads keep "
                        "up with many raters)")

    r = sub.add_parser("report", help="labelled real %% per method, with standard errors; writes run records")
    r.add_argument("study", type=Path)
    r.add_argument("--out", type=Path, default=None,
                   help="run directory for metrics.json, report.md and raters.csv "
                        "(default STUDY/realism-<study name>; 'colorbench table --runs' reads it)")
    r.add_argument("--max-sanity-errors", type=int, default=0,
                   help="exclude raters who miss more sanity pairs than this (default 0: the wrong colours are "
                        "obvious, so one miss means the rater was not looking)")
    r.add_argument("--include-unfinished", action="store_true",
                   help="also count raters who stopped early but passed the sanity pairs they saw "
                        "(default: only raters who finished, as every rater is then screened by all sanity pairs)")
    r.add_argument("--confidence", type=float, default=0.95, help="level of the Wilson interval (default 0.95)")


def _create(args: argparse.Namespace) -> int:
    from downstream.study.design import create_study

    m = create_study(args.real, args.method, args.out, photos=args.photos, sanity=args.sanity,
                     practice=args.practice, design=args.design, exposure=args.exposure, max_side=args.max_side,
                     seed=args.seed, dataset=args.dataset_name, consent_file=args.consent, sample=args.sample)
    kinds = {k: sum(p["kind"] == k for p in m["pairs"]) for k in ("test", "sanity", "practice")}
    per_rater = len(m["photos"]) * (1 if m["design"] == "latin" else m["conditions"]) + kinds["sanity"] + kinds["practice"]
    sampled = "".join(f" ({name}: {len(js)} sample(s), each a separate fake)" for name, js in m["samples"].items())
    print(f"study {args.out}: {len(m['photos'])} photos x {len(m['methods'])} method(s){sampled} = {kinds['test']} "
          f"test pairs, {kinds['sanity']} sanity, {kinds['practice']} practice; {per_rater} trials per rater "
          f"(design {m['design']}, {m['blocks']} block(s), exposure {m['exposure_ms']} ms)")
    if m["skipped_gray"]:
        print(f"skipped {len(m['skipped_gray'])} grayscale photo(s): {', '.join(m['skipped_gray'][:5])}", file=sys.stderr)
    print(f"next: colorbench study serve {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from waitress import create_server

    from downstream.study.app import create_app
    from downstream.study.design import load_manifest, rater_plan

    app = create_app(args.study)
    manifest = load_manifest(args.study)
    try:
        server = create_server(app, host=args.host, port=args.port, threads=args.threads, ident="colorbench-study")
    except (OSError, ValueError) as exc:  # port taken, no permission, a host that does not resolve
        raise StudyError(f"cannot listen on {args.host}:{args.port}: {getattr(exc, 'strerror', None) or exc}") from None
    host, port = server.effective_host, server.effective_port
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"serving study {args.study} on http://{shown}:{port}/ ({len(rater_plan(manifest, 0))} trials per rater, "
          f"exposure {manifest['exposure_ms']} ms; answers in {args.study / 'answers.sqlite'}); Ctrl-C stops", flush=True)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            print("note: listening beyond this machine; anyone who can reach the port can take part", flush=True)
    except ValueError:
        pass
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _report(args: argparse.Namespace) -> int:
    from downstream.study.report import report

    text, path = report(args.study, args.out, args.max_sanity_errors, args.include_unfinished, args.confidence,
                        argv=sys.argv)
    print(text)
    print(f"run records: {path / 'metrics.json'} (colorbench table --runs {path.parent})")
    return 0


def run(args: argparse.Namespace) -> int:
    # StudyError is a ValueError: benchmarks.cli prints it as one line and exits 2
    return {"create": _create, "serve": _serve, "report": _report}[args.action](args)
