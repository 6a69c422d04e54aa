"""Fail on a known vulnerability in any pinned dependency (`make audit`, run by `make test`).

pip-audit checks each pin against PyPI's advisory data. Where PyPI answers only project-level queries (as the
registry this project is built against does), pip-audit skips the pin; this then reads the project's page
instead, whose advisories are those of its newest release, so a pin that is the newest release is still
checked. A pin that is neither is reported as unaudited rather than passed in silence. Prints one JSON object.

    .venv/bin/python tools/audit_deps.py [requirements.txt ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "requirements.txt", ROOT / "requirements-llama.txt", ROOT / "requirements-ner.txt"]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            out[name.split("[")[0].strip().lower()] = version.split()[0]  # drops a line's `\` and --hash=
    return out


def pip_audit(path: Path) -> list[dict]:
    run = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(path), "--disable-pip", "--no-deps", "--format", "json"],
        capture_output=True,
        text=True,
    )
    if not run.stdout.strip():
        raise SystemExit(f"pip-audit failed on {path.name}:\n{run.stderr}")
    return json.loads(run.stdout)["dependencies"]


def newest_release_advisories(client: httpx.Client, name: str, version: str) -> list[dict] | None:
    """The project's advisories when `version` is its newest release; None when that can't be said."""
    page = client.get(f"https://pypi.org/pypi/{name}/json")
    if page.status_code != 200 or page.json()["info"]["version"] != version:
        return None
    return [v for v in page.json().get("vulnerabilities", []) if not v.get("withdrawn")]


def audit(files: list[Path]) -> dict:
    vulnerable, unaudited, audited = [], [], 0
    with httpx.Client(timeout=30) as client:
        for path in files:
            pinned = pins(path)
            for dep in pip_audit(path):
                name, found = dep["name"].lower(), dep.get("vulns")
                if "skip_reason" in dep:
                    found = newest_release_advisories(client, name, pinned.get(name, ""))
                if found is None:
                    unaudited.append(f"{name}=={pinned.get(name)}")
                    continue
                audited += 1
                vulnerable += [{"package": name, "version": pinned.get(name), "id": v["id"]} for v in found]
    return {"audited": audited, "vulnerable": vulnerable, "unaudited": unaudited}


def main() -> None:
    files = [Path(a) for a in sys.argv[1:]] or [f for f in FILES if f.exists()]
    result = audit(files)
    print(json.dumps(result))
    if result["vulnerable"]:
        sys.exit("Known vulnerabilities in pinned dependencies: upgrade them (see the JSON above).")


if __name__ == "__main__":
    main()
