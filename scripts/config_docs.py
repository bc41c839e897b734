"""Print docs/configuration.md's option table from the Config dataclass (the one source).

.venv/bin/python scripts/config_docs.py > docs/configuration.md
"""

from __future__ import annotations

import dataclasses

from cpc_signaling.server.config import Config, env_name, flag_name

HEAD = """# Configuration

Every option is a flag of `cpc-signaling serve` and an environment variable `CPC_<NAME>`.
A flag wins over a variable, a variable over the default. Durations are in seconds.
`cpc-signaling serve --help` prints the same list. This page is generated from
`src/cpc_signaling/server/config.py` by `scripts/config_docs.py`; a test keeps them equal.

| flag | variable | default | meaning |
| --- | --- | --- | --- |
"""


def render() -> str:
    rows = []
    for f in dataclasses.fields(Config):
        default = "(none)" if f.default is None else f"`{f.default}`"
        meaning = str(f.metadata["help"]).replace("|", "\\|")
        rows.append(f"| `{flag_name(f.name)}` | `{env_name(f.name)}` | {default} | {meaning} |")
    return HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
