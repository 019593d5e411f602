#!/usr/bin/env python3
"""Checks Cargo.lock against a local RustSec advisory database (no network).

The fallback of scripts/audit when `cargo audit` is not installed. Reads the same
database layout: crates/<name>/RUSTSEC-*.md, each starting with a ```toml block:

    [advisory]  id, package, withdrawn (date, optional), informational (optional)
    [versions]  patched = [semver requirements], unaffected = [...]

A locked crates.io package is vulnerable when an advisory for its name is not
withdrawn and its version matches none of `patched` and none of `unaffected`.
Informational advisories (`unmaintained`, `unsound`, `notice`) are warnings, not
failures. IDs listed in the ignore file (one per line, `RUSTSEC-... # reason`) are
reported as ignored.

Version requirements follow Cargo's semver rules: comma-joined comparators
(`>=`, `>`, `<`, `<=`, `=`, `^`, `~`, bare = caret, `*` / `1.*` wildcards), and a
pre-release version only matches a comparator that names the same
major.minor.patch with a pre-release.

Exit: 0 clean (or only warnings/ignored), 1 vulnerable, 2 usage or parse error.
`--self-test` runs the checker's own tests.
"""

import argparse
import os
import re
import sys
import tempfile
import tomllib

# ---------------------------------------------------------------- versions


def parse_version(text):
    """'1.2.3-alpha.1+build' -> (1, 2, 3, ('alpha', 1)); build metadata ignored."""
    text = text.strip().split("+", 1)[0]
    core, _, pre = text.partition("-")
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a semver version: {text!r}")
    ids = tuple(int(i) if i.isdigit() else i for i in pre.split(".")) if pre else ()
    return (int(parts[0]), int(parts[1]), int(parts[2]), ids)


def _pre_key(ids):
    # A release sorts after every pre-release of the same version; numeric
    # identifiers sort before alphanumeric ones; a shorter list sorts first.
    if not ids:
        return (1,)
    return (0,) + tuple((0, i, "") if isinstance(i, int) else (1, 0, i) for i in ids)


def vkey(v):
    return (v[0], v[1], v[2], _pre_key(v[3]))


_COMPARATOR = re.compile(r"^\s*(>=|<=|>|<|=|\^|~)?\s*([0-9*xX][0-9A-Za-z.*+-]*)\s*$")


def _partial(text):
    """'1.2' -> ([1, 2], pre); wildcards end the list."""
    text = text.split("+", 1)[0]
    core, _, pre = text.partition("-")
    nums = []
    for p in core.split("."):
        if p in ("*", "x", "X"):
            break
        if not p.isdigit():
            raise ValueError(f"bad version in requirement: {text!r}")
        nums.append(int(p))
    if len(nums) > 3:
        raise ValueError(f"bad version in requirement: {text!r}")
    ids = tuple(int(i) if i.isdigit() else i for i in pre.split(".")) if pre else ()
    return nums, ids


def comparator_matches(op, text, v):
    nums, pre = _partial(text)
    full = nums + [0] * (3 - len(nums))
    base = (full[0], full[1], full[2], pre if len(nums) == 3 else ())
    k = vkey(v)

    def upper(i):
        u = nums[: i + 1]
        u[i] += 1
        u += [0] * (3 - len(u))
        # `< x.y.z` excludes the pre-releases of x.y.z as well (Cargo's `-0`).
        return vkey((u[0], u[1], u[2], (0,)))

    if op in (None, "^"):
        if not nums:
            return True
        if nums[0] > 0 or len(nums) == 1:
            hi = upper(0)
        elif len(nums) == 2 or nums[1] > 0:
            hi = upper(1)
        else:
            hi = upper(2)
        return vkey(base) <= k < hi
    if op == "~":
        if not nums:
            return True
        hi = upper(0) if len(nums) == 1 else upper(1)
        return vkey(base) <= k < hi
    if op == "=":
        if len(nums) == 3:
            return k == vkey(base)
        if not nums:
            return True
        return vkey(base) <= k < upper(len(nums) - 1)
    if op == ">=":
        return k >= vkey(base)
    if op == ">":
        if len(nums) == 3:
            return k > vkey(base)
        if not nums:
            return False
        return k >= upper(len(nums) - 1)
    if op == "<":
        return k < vkey(base)
    if op == "<=":
        if len(nums) == 3:
            return k <= vkey(base)
        if not nums:
            return True
        return k < upper(len(nums) - 1)
    raise ValueError(f"unknown operator {op!r}")


def requirement_matches(req, version):
    """Cargo semantics for one requirement string (comma-joined comparators)."""
    v = parse_version(version) if isinstance(version, str) else version
    comparators = []
    for part in req.split(","):
        m = _COMPARATOR.match(part)
        if not m:
            raise ValueError(f"bad requirement: {req!r}")
        comparators.append((m.group(1), m.group(2)))
    if not all(comparator_matches(op, text, v) for op, text in comparators):
        return False
    if v[3]:
        # A pre-release only matches if some comparator names the same
        # major.minor.patch with a pre-release.
        for _, text in comparators:
            nums, pre = _partial(text)
            if pre and len(nums) == 3 and tuple(nums) == v[:3]:
                return True
        return False
    return True


# ---------------------------------------------------------------- advisories


def load_advisories(db):
    out = {}
    crates = os.path.join(db, "crates")
    for name in sorted(os.listdir(crates)):
        folder = os.path.join(crates, name)
        if not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".md"):
                continue
            path = os.path.join(folder, fname)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            m = re.match(r"\s*```toml\s*\n(.*?)\n```", text, re.S)
            if not m:
                raise ValueError(f"{path}: no ```toml front matter")
            try:
                doc = tomllib.loads(m.group(1))
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: {e}") from e
            adv = doc.get("advisory", {})
            versions = doc.get("versions", {})
            title = next(
                (l[2:].strip() for l in text[m.end():].splitlines() if l.startswith("# ")),
                "",
            )
            out.setdefault(adv.get("package", name), []).append(
                {
                    "id": adv.get("id", fname[:-3]),
                    "withdrawn": adv.get("withdrawn"),
                    "informational": adv.get("informational"),
                    "patched": versions.get("patched", []),
                    "unaffected": versions.get("unaffected", []),
                    "title": title,
                }
            )
    return out


def load_lock(path):
    with open(path, "rb") as f:
        lock = tomllib.load(f)
    pkgs = []
    for p in lock.get("package", []):
        # Only published crates have advisories; path and git packages are ours.
        if str(p.get("source", "")).startswith("registry+"):
            pkgs.append((p["name"], p["version"]))
    return pkgs


def load_ignores(path):
    ignores = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                body, _, reason = line.partition("#")
                for word in body.split():
                    ignores[word] = reason.strip()
    return ignores


def affected(adv, version):
    v = parse_version(version)
    if any(requirement_matches(r, v) for r in adv["patched"]):
        return False
    if any(requirement_matches(r, v) for r in adv["unaffected"]):
        return False
    return True


def check(db, lock_path, ignore_path=None, out=sys.stdout):
    """Returns the exit code; prints one line per finding."""
    advisories = load_advisories(db)
    packages = load_lock(lock_path)
    ignores = load_ignores(ignore_path)
    errors = warnings = ignored = 0
    for name, version in packages:
        for adv in advisories.get(name, []):
            if adv["withdrawn"] or not affected(adv, version):
                continue
            fix = ", ".join(adv["patched"]) or "none"
            line = f"{adv['id']} {name} {version}: {adv['title']} (patched: {fix})"
            if adv["id"] in ignores:
                ignored += 1
                print(f"ignored: {line} -- {ignores[adv['id']] or 'no reason given'}", file=out)
            elif adv["informational"]:
                warnings += 1
                print(f"warning ({adv['informational']}): {line}", file=out)
            else:
                errors += 1
                print(f"error: {line}", file=out)
    print(
        f"audit: {len(packages)} locked crates, {sum(map(len, advisories.values()))} advisories: "
        f"{errors} vulnerable, {warnings} warnings, {ignored} ignored",
        file=out,
    )
    return 1 if errors else 0


# ---------------------------------------------------------------- self-test


def self_test():
    cases = [
        (">= 1.2.3", "1.2.3", True),
        (">= 1.2.3", "1.2.2", False),
        (">= 1.2.3", "1.3.0-alpha", False),  # pre-release of another version
        ("< 1.2.3", "1.2.3-rc.1", False),  # ... even below the bound
        (">= 1.2.3-rc.1", "1.2.3-rc.2", True),
        (">= 1.2.3-rc.1", "1.2.3-beta", False),
        (">= 1.2.3-rc.1", "1.2.3", True),
        ("^1.2.3", "1.9.0", True),
        ("^1.2.3", "2.0.0", False),
        ("^1.2.3", "1.2.2", False),
        ("^0.2.3", "0.2.9", True),
        ("^0.2.3", "0.3.0", False),
        ("^0.0.3", "0.0.3", True),
        ("^0.0.3", "0.0.4", False),
        ("^0.0", "0.0.9", True),
        ("^0.0", "0.1.0", False),
        ("^0", "0.9.9", True),
        ("^0", "1.0.0", False),
        ("1.2", "1.5.0", True),  # bare = caret
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        ("~1.2", "1.2.0", True),
        ("~1", "1.9.0", True),
        ("~1", "2.0.0", False),
        ("=1.2.3", "1.2.3", True),
        ("=1.2.3", "1.2.4", False),
        ("=1.2", "1.2.7", True),
        ("=1.2", "1.3.0", False),
        ("> 1.2", "1.2.9", False),
        ("> 1.2", "1.3.0", True),
        ("> 1.2.3", "1.2.4", True),
        ("<= 1.2", "1.2.9", True),
        ("<= 1.2", "1.3.0", False),
        ("< 1.2", "1.1.9", True),
        ("< 1.2", "1.2.0", False),
        ("*", "3.4.5", True),
        ("1.*", "1.9.0", True),
        ("1.*", "2.0.0", False),
        ("1.2.*", "1.2.5", True),
        (">= 0.14.10, < 0.15.0", "0.14.12", True),
        (">= 0.14.10, < 0.15.0", "0.15.0", False),
        (">= 0.14.10, < 0.15.0", "0.14.9", False),
        (">=1.0.0,<1.0.5", "1.0.4", True),
        ("^1.2.3", "1.2.3+build.5", True),
    ]
    failed = 0
    for req, ver, want in cases:
        got = requirement_matches(req, ver)
        if got != want:
            failed += 1
            print(f"FAIL: {req!r} matches {ver!r}: got {got}, want {want}")
    for v in ["1.2", "x", "1.2.3.4"]:
        try:
            parse_version(v)
            failed += 1
            print(f"FAIL: {v!r} parsed as a version")
        except ValueError:
            pass

    advisory = """```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "demo"
date = "2099-01-01"
{extra}
[versions]
patched = ["^1.4.2", ">= 2.1.0"]
unaffected = ["< 1.0.0"]
```

# Demo is broken
"""
    lock = """version = 4

[[package]]
name = "demo"
version = "{v}"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "ours"
version = "0.1.0"
"""
    expectations = [
        ("1.4.1", "", None, 1),  # vulnerable
        ("1.4.2", "", None, 0),  # patched
        ("1.9.0", "", None, 0),  # patched (caret)
        ("2.0.5", "", None, 1),  # between the patched ranges
        ("2.1.0", "", None, 0),
        ("0.9.0", "", None, 0),  # unaffected
        ("1.4.1", 'withdrawn = "2099-02-01"', None, 0),
        ("1.4.1", 'informational = "unmaintained"', None, 0),
        ("1.4.1", "", "RUSTSEC-2099-0001  # accepted for the test", 0),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for version, extra, ignore, want in expectations:
            db = os.path.join(tmp, "db")
            os.makedirs(os.path.join(db, "crates", "demo"), exist_ok=True)
            with open(os.path.join(db, "crates", "demo", "RUSTSEC-2099-0001.md"), "w") as f:
                f.write(advisory.format(extra=extra))
            lock_path = os.path.join(tmp, "Cargo.lock")
            with open(lock_path, "w") as f:
                f.write(lock.format(v=version))
            ignore_path = None
            if ignore:
                ignore_path = os.path.join(tmp, "ignore")
                with open(ignore_path, "w") as f:
                    f.write(ignore + "\n")
            sink = open(os.devnull, "w")
            got = check(db, lock_path, ignore_path, out=sink)
            sink.close()
            if got != want:
                failed += 1
                print(f"FAIL: demo {version} with {extra or ignore or 'nothing'}: exit {got}, want {want}")
    total = len(cases) + 3 + len(expectations)
    print(f"self-test: {total - failed}/{total} passed")
    return 1 if failed else 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=os.environ.get("PATGATE_ADVISORY_DB")
                    or os.path.join(repo, "..", "shared", "advisory-db"))
    ap.add_argument("--lock", default=os.path.join(repo, "Cargo.lock"))
    ap.add_argument("--ignore-file", default=os.path.join(here, "audit-ignore"))
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not os.path.isdir(os.path.join(args.db, "crates")):
        print(f"audit: skipped: no advisory database at {os.path.abspath(args.db)} "
              "(set PATGATE_ADVISORY_DB to a RustSec advisory-db checkout)")
        return 0
    try:
        return check(args.db, args.lock, args.ignore_file)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"audit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
