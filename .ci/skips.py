"""Fail when a pytest run (its JUnit XML) skipped a test for a reason .ci/allowed-skips does not list.

    python3 .ci/skips.py RESULTS.xml .ci/allowed-skips

allowed-skips: one regular expression per line (searched in the skip message), then `  # why it cannot apply`;
blank lines and lines starting with # are ignored. Every skip is printed with the rule that allowed it.
"""

import re
import sys
import xml.etree.ElementTree as ET


def rules(path: str) -> list[tuple[re.Pattern, str]]:
    out = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, why = line.partition("  # ")
        out.append((re.compile(pattern.strip()), why.strip()))
    return out


def main(results: str, allowed: str) -> int:
    allow = rules(allowed)
    bad = 0
    for case in ET.parse(results).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            message = skip.get("message") or skip.text or ""
            name = f"{case.get('classname')}::{case.get('name')}"
            why = next((w for p, w in allow if p.search(message)), None)
            if why is None:
                bad += 1
                print(f"UNEXPLAINED SKIP {name}: {message}")  # noqa: T201 (a CI script prints its verdict)
            else:
                print(f"allowed skip {name}: {message} [{why}]")  # noqa: T201 (a CI script prints its verdict)
    if bad:
        print(f"{bad} skip(s) not in {allowed}: fix the cause, or list the reason there if it cannot apply here")  # noqa: T201 (a CI script prints its verdict)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
