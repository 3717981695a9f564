"""``slm-gate``: the release gates. ``licenses`` judges an environment and its models and,
given them, every file of the binary's tree, the OS libraries it links, Litestream's Go
modules and an image's packages; ``budget``, ``image``, ``sign`` and ``verify``.

Exit codes: 0 every component allowed, 1 any violation, 2 broken policy or an environment
that cannot be inspected. One line per violation on stderr; the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from slm.model.planner import KvType

from slm_policy.errors import GateError
from slm_policy.inventory import (
    native_libraries,
    python_packages,
    shipped_models,
    unlisted_distributions,
)
from slm_policy.licenses import Report, Shipped, evaluate
from slm_policy.policy_file import load_policy
from slm_policy.sbom import cyclonedx

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "licenses.toml"


def _table(report: Report) -> str:
    rows = [("kind", "component", "version", "license", "verdict")]
    for v in report.verdicts:
        rows.append((v.kind, v.name, v.version, v.expression or v.reported or "?",
                     "allow" + (" (exception)" if v.note.startswith("exception") else "")
                     if v.allowed else "DENY"))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    return "\n".join("  ".join(c[:60].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: no half-written report is ever left in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slm-gate", description="service-slm release gates")
    sub = parser.add_subparsers(dest="gate", required=True)
    lic = sub.add_parser("licenses", help="judge the licenses of what ships")
    lic.add_argument("--python", default=sys.executable,
                     help="interpreter of the environment that ships (default: this one)")
    lic.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    lic.add_argument("--model", type=Path, action="append", default=[],
                     help="a GGUF model that ships outside the environment (repeatable)")
    lic.add_argument("--json", type=Path, help="write the JSON report here")
    lic.add_argument("--sbom", type=Path, help="write a CycloneDX SBOM here")
    lic.add_argument("--product-version", default="0.0.0")
    lic.add_argument("--binary-tree", type=Path, default=None,
                     help="the binary as it runs (its unpacked tree): judge every file in it")
    lic.add_argument("--build-root", type=Path, default=Path("/"),
                     help="the root the binary was built in, whose Debian packages its native "
                     "libraries came from (default: /; an emulated build's chroot)")
    lic.add_argument("--nuitka-version", default="", help="recorded for slm.bin's runtime")
    lic.add_argument("--cpython-version", default="",
                     help="the CPython the binary was built with (default: --python's)")
    lic.add_argument("--os-root", type=Path, default=None,
                     help="the image's root file system: judge its Debian packages and the OS "
                     "libraries the binary links at run time")
    lic.add_argument("--litestream", type=Path, default=None,
                     help="the Litestream binary: judge the Go modules it embeds")
    bud = sub.add_parser("budget", help="measure the service's peak memory against the "
                         "budget and the planner")
    bud.add_argument("--model", type=Path, default=None, help="default: the default model")
    bud.add_argument("--ctx", type=int, action="append", default=[],
                     help="contexts to measure (repeatable; default: 2048, 4096, 8192)")
    bud.add_argument("--configured-ctx", type=int, default=4096,
                     help="the context the appliance serves (must fit the budget)")
    bud.add_argument("--kv-type", choices=[t.value for t in KvType],
                     default=KvType.F16.value)
    bud.add_argument("--policy", type=Path, default=None)
    bud.add_argument("--json", type=Path, help="write the measurements here")
    bud.add_argument("--binary", type=Path, default=None,
                     help="the compiled binary to measure (what ships); default: the Python "
                     "package, a stand-in")
    bud.add_argument("--binary-manifest", type=Path, default=None,
                     help="record the measured runtime baseline in this slm.manifest.json")
    bud.add_argument("--calibrate", action="store_true",
                     help="only measure (and record) the runtime baseline")
    img = sub.add_parser("image", help="the appliance image's size against the limit")
    img.add_argument("manifest", type=Path, help="build/out/image/ARCH/manifest.json")
    img.add_argument("--policy", type=Path, default=None)
    sig = sub.add_parser("sign", help="sign artefacts with Sigstore (bundle beside each) and "
                         "write a signed release manifest")
    sig.add_argument("artefacts", type=Path, nargs="+")
    sig.add_argument("--manifest", type=Path, default=None,
                     help="also write and sign this release manifest (paths relative to "
                     "its directory)")
    sig.add_argument("--release-of", type=Path, default=None, metavar="BINARY_MANIFEST",
                     help="the build's slm.manifest.json: the release's architecture, "
                     "version and source commit (needed with --manifest)")
    sig.add_argument("--trust-config", type=Path, default=_env_path("SLM_TRUST_CONFIG"),
                     help="a Sigstore ClientTrustConfig JSON (default: $SLM_TRUST_CONFIG, "
                     "else public Sigstore)")
    sig.add_argument("--identity-token-file", type=Path,
                     default=_env_path("SLM_IDENTITY_TOKEN_FILE"),
                     help="OIDC token (default: $SLM_IDENTITY_TOKEN_FILE, $SIGSTORE_ID_TOKEN "
                     "or the CI's ambient one)")
    ver = sub.add_parser("verify", help="verify a signed release against a signer of "
                         "policy/signing.toml")
    ver.add_argument("manifest", type=Path, help="the release manifest (release.json)")
    ver.add_argument("--signer", default="release", help="a [signers.NAME] of the policy")
    ver.add_argument("--trusted-root", type=Path, default=None,
                     help="a pinned trusted_root.json (default: public Sigstore's, via TUF)")
    ver.add_argument("--policy", type=Path, default=None)
    ver.add_argument("--expect", type=Path, nargs="*", default=[],
                     help="files the release must list (each missing one is a failure)")
    ver.add_argument("--arch", default=None, choices=("amd64", "arm64"),
                     help="the architecture the release must be for")
    ver.add_argument("--installed-version", default=None,
                     help="refuse a release older than this one (a downgrade)")
    args = parser.parse_args(argv)
    if args.gate in ("sign", "verify"):
        return _release(args)
    if args.gate == "budget":
        return _budget(args)
    if args.gate == "image":
        return _image(args)
    try:
        policy = load_policy(args.policy)
        packages = python_packages(args.python)
        libs = native_libraries(args.python, packages)
        models = shipped_models(args.python, args.model)
        unlisted = unlisted_distributions(args.python, packages)
        shipped = _shipped(args)
    except GateError as exc:
        print(f"slm-gate: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # an unreadable tree or root: cannot judge
        print(f"slm-gate: error: cannot inspect what ships: {exc}", file=sys.stderr)
        return 2
    report = evaluate(policy, packages, libs, models, unlisted, shipped)
    print(_table(report))
    for warning in report.warnings:
        print(f"license-gate: warning: {warning}", file=sys.stderr)
    for verdict in report.violations:
        print(verdict.line(), file=sys.stderr)
    if args.json:
        _write(args.json, report.to_json())
    if args.sbom:
        _write(args.sbom, cyclonedx(report, packages, libs, models, product="service-slm",
                                    version=args.product_version, shipped=shipped))
    n = len(report.violations)
    print(f"license-gate: {len(report.verdicts)} components, {n} violation(s)",
          file=sys.stderr)
    return 1 if n else 0


def _shipped(args: argparse.Namespace) -> Shipped | None:
    """What the gate judges beyond the Python closure, from the arguments given."""
    if not (args.binary_tree or args.os_root or args.litestream):
        return None
    from slm_policy.debian import installed_packages
    from slm_policy.go_buildinfo import read_build_info
    from slm_policy.shipped_tree import read_tree, run_time_links

    tree = read_tree(args.binary_tree, args.python, args.build_root) \
        if args.binary_tree else None
    if tree is not None and args.cpython_version:
        from dataclasses import replace

        tree = replace(tree, python_version=args.cpython_version)
    build_packages = {}
    if tree is not None:
        wanted = {f.owner for f in tree.files if f.origin == "debian"}
        build_packages = {p.name: p for p in installed_packages(args.build_root)
                          if p.name in wanted}
    os_packages = installed_packages(args.os_root) if args.os_root else []
    links = run_time_links(tree, args.os_root) if tree is not None and args.os_root else []
    go = read_build_info(args.litestream) if args.litestream else None
    return Shipped(tree, args.nuitka_version, build_packages, links, go, os_packages)


def _budget(args: argparse.Namespace) -> int:
    from slm_policy.budget import POLICY, calibrate, load_budget, record_baseline, run_gate

    try:
        budget = load_budget(args.policy or POLICY)
    except ValueError as exc:
        print(f"slm-gate: error: {exc}", file=sys.stderr)
        return 2
    what = (f"the binary {args.binary}, unpacked as the image runs it" if args.binary
            else "the Python package (not what ships)")
    try:
        baseline = calibrate(args.model, binary=args.binary)
        print(f"runtime baseline of {what}: {baseline:.1f} MB (measured: a 512-token "
              "context, the model alone)")
        if args.binary_manifest:
            record_baseline(args.binary_manifest, baseline)
            print(f"recorded as runtime_baseline_mb in {args.binary_manifest}")
        if args.calibrate:
            return 0
        contexts = args.ctx or [2048, 4096, 8192]
        if args.configured_ctx not in contexts:
            contexts.append(args.configured_ctx)
        ok, rows = run_gate(args.model, sorted(contexts), budget, baseline_mb=baseline,
                            configured_ctx=args.configured_ctx, binary=args.binary,
                            kv_type=args.kv_type)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"slm-gate: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. ModelError: one line, exit 2
        print(f"slm-gate: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    mb = 1e6
    print(f"memory budget {budget.budget_mb:g} MB at context {args.configured_ctx}; "
          f"tolerance {budget.prediction_tolerance:.0%}; load: 3 full-context clients (one "
          "through a LoRA adapter), a prompt the prompt cache keeps and restores, a DOCX "
          "read meanwhile")
    print(f"{'ctx':>6} {'predicted':>10} {'measured':>10} {'error':>7} {'PSS':>8} "
          f"{'anon+swap':>10} {'cgroup':>8} {'VmHWM':>8}  verdict")
    for r in rows:
        cg = f"{r['cgroup_peak'] / mb:8.1f}" if r["cgroup_peak"] else f"{'n/a':>8}"
        verdict = ("OVER BUDGET" if r["over_budget"] else
                   "PREDICTION OFF" if r["bad_prediction"] else "ok")
        print(f"{r['ctx']:>6} {r['predicted'] / mb:10.1f} {r['measured'] / mb:10.1f} "
              f"{r['error']:+7.1%} {r['pss_peak'] / mb:8.1f} {r['anon_swap_peak'] / mb:10.1f} "
              f"{cg} {r['hwm_sum_peak'] / mb:8.1f}  {verdict}")
    print("(MB, 10^6 bytes, sampled every 0.2 s over the service's process tree. "
          "predicted = the planner's footprint + what the prompt cache holds + the adapter; "
          "measured = the service's peak RSS (VmHWM of the processes that outlive the "
          "load); PSS and anon+swap = the peak sums of PSS and of RssAnon + VmSwap, the "
          "document reader included while it ran; cgroup = the peak of the memory cgroup the "
          f"service ran in, page cache included ({rows[0]['cgroup'] if rows else 'none'}); "
          "VmHWM = the largest sum of peak RSS with the reader, an upper bound that counts "
          "shared pages once per process. The budget is judged against the largest of "
          "measured, PSS, anon+swap and cgroup)")
    if args.json:
        _write(args.json, {"ok": ok, "budget_mb": budget.budget_mb, "unit": "bytes",
                           "runtime_baseline_mb": baseline, "service": what, "rows": rows})
    for r in rows:
        if r["over_budget"]:
            print(f"budget-gate: FAIL context {r['ctx']}: peak {r['peak'] / mb:.1f} MB "
                  f"over {budget.budget_mb:g} MB", file=sys.stderr)
        if r["bad_prediction"]:
            print(f"budget-gate: FAIL context {r['ctx']}: predicted "
                  f"{r['predicted'] / mb:.1f} MB vs measured {r['measured'] / mb:.1f} MB "
                  f"({r['error']:+.1%})", file=sys.stderr)
    return 0 if ok else 1


def _image(args: argparse.Namespace) -> int:
    from slm_policy.budget import POLICY, load_budget
    from slm_policy.image_size import check, load_manifest

    try:
        budget = load_budget(args.policy or POLICY)
        manifest = load_manifest(args.manifest)
    except ValueError as exc:
        print(f"slm-gate: error: {exc}", file=sys.stderr)
        return 2
    except GateError as exc:
        print(f"slm-gate: error: {exc.one_line()}", file=sys.stderr)
        return 2
    lines, failures = check(manifest, budget)
    print("\n".join(lines))
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def _release(args: argparse.Namespace) -> int:
    from slm.errors import SignatureError

    from slm_policy.release import SIGNING_POLICY, identity_of_binary, load_signer, sign, verify

    try:
        if args.gate == "sign":
            identity = identity_of_binary(args.release_of) if args.release_of else None
            for done in sign(args.artefacts, trust_config=args.trust_config,
                             token_file=args.identity_token_file, manifest=args.manifest,
                             identity=identity):
                print(f"signed {done.path} ({done.size / 1e6:.1f} MB, sha256 "
                      f"{done.sha256[:12]}…) in {done.seconds:.2f} s -> {done.bundle.name}")
            return 0
        signer = load_signer(args.signer, args.policy or SIGNING_POLICY)
        result = verify(args.manifest, trusted_root=args.trusted_root, signer=signer,
                        expect=args.expect, architecture=args.arch,
                        installed_version=args.installed_version)
    except (GateError, SignatureError) as exc:  # SignatureError: an unusable trust root
        print(f"slm-gate: error: {exc.one_line()}", file=sys.stderr)
        return 2
    verified, failures = result.verified, result.failures
    if result.identity:
        who = result.identity
        print(f"release {who.version} for {who.architecture} from commit {who.commit}")
    for v in verified:
        print(v.line())
    for failure in failures:
        print(f"verify: FAIL {failure}", file=sys.stderr)
    print(f"verify: {len(verified)} verified, {len(failures)} failed, signer "
          f"{signer.identity} ({signer.issuer})", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
