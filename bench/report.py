"""What every script prints and writes: :class:`Report` (a markdown table plus headline numbers,
and the same as JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    """What a benchmark prints and writes: rows for a markdown table plus headline numbers."""

    benchmark: str
    size: str
    env: dict[str, Any]
    columns: list[tuple[str, str]]  # (key, header)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "size": self.size,
            "env": self.env,
            "config": self.config,
            "results": self.rows,
            "summary": self.summary,
            "notes": self.notes,
        }

    def markdown(self) -> str:
        env = self.env
        lines = [
            f"# {self.benchmark} --size {self.size}: {env['device_name']} ({env['device']}), torch {env['torch']}, "
            f"threads {env['torch_threads']}, {env['date']}",
            "",
            "| " + " | ".join(h for _, h in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in self.columns) + " |")
        if self.summary:
            lines.append("")
            lines += [f"- {k}: {_fmt(v)}" for k, v in self.summary.items()]
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines)

    def emit(self, json_path: str | None) -> dict[str, Any]:
        print(self.markdown(), flush=True)
        data = self.to_dict()
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(data, indent=1, default=str))
        return data


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)
