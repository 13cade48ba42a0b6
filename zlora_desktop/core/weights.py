"""Block weights: a grid over (block, component) plus one value for "other" modules.

Text syntax (CLI, presets, recipes), rules separated by commas, semicolons or new lines::

    default=1, L00-L09=0.8, adaLN*=0.5, L16-L24.w1,w2,w3=1.3, NR=0, CR=0

A rule is ``TARGET=VALUE`` (set) or ``TARGET*=VALUE`` (multiply). Rules apply left to right,
so where two rules match the same cell the later ``=`` wins and ``*=`` scales what is there.
Every cell starts at 1.

TARGET is one of
- ``default``, ``all`` or ``*``: every cell and ``other``;
- ``other``: modules outside the blocks (embedders, final layer);
- blocks: ``L05``, ``L00-L09`` (a range in model order), ``NR0``, ``NR`` / ``CR`` / ``SR`` / ``L``
  (all noise-refiner / context-refiner / siglip-refiner / layer blocks), ``refiners`` (NR, CR and
  SR). ``SR0``/``SR1`` are Z-Image-Omni-Base's siglip refiners: they weight only files that have
  them (a Turbo/Base file has none), and have no adaLN;
- components: ``adaLN q k v out w1 w2 w3``, groups ``attn`` (q,k,v,out), ``ff`` (w1,w2,w3),
  ``qkv``;
- a comma list of the above (``L00,L05``, ``w1,w2``), matching every named block × every named
  component (all blocks when none is named, all components when none is named);
- ``BLOCKS.COMPONENTS`` with either side a list or range: ``L16-L24.w1,w2,w3``, ``NR.attn``.

LBW vectors (one value per block, as the LoRA Block Weight extension writes them): ``NAME:v1,…``
with 30 values (layers L00…L29, refiners stay 1), 34 values (NR0, NR1, CR0, CR1, then L00…L29;
siglip refiners stay 1) or 36 values (NR0, NR1, CR0, CR1, SR0, SR1, then L00…L29).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from . import model
from .errors import ZLoraError

Cell = tuple[str, str]
_ALL_CELLS: tuple[Cell, ...] = model.ALL_CELLS
_BLOCK_NAME = re.compile(r"^(L\d\d|NR[01]|CR[01]|SR[01])$")
# LBW vector sizes -> the blocks their values are for, in order.
LBW_BLOCKS = {30: model.LAYER_BLOCKS, 34: model.TURBO_BLOCKS, 36: model.BLOCKS}
_LBW_FORMS = "30 values (L00…L29), 34 (NR0,NR1,CR0,CR1,L00…L29) or 36 (NR0,NR1,CR0,CR1,SR0,SR1,L00…L29)"


def format_value(value: float) -> str:
    """Shortest text that reads back to exactly the same float."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@dataclass
class BlockWeights:
    cells: dict[Cell, float] = field(default_factory=lambda: dict.fromkeys(_ALL_CELLS, 1.0))
    other: float = 1.0

    # ---- access -------------------------------------------------------------------------

    def get(self, block: str, component: str) -> float:
        return self.cells[(block, component)]

    def set(self, block: str, component: str, value: float) -> None:
        self.cells[(block, component)] = float(value)

    def factor(self, module: str) -> float:
        """The weight applied to one canonical module."""
        split = model.split_module(module)
        return self.other if split is None else self.cells[split]

    def is_identity(self) -> bool:
        return self.other == 1.0 and all(v == 1.0 for v in self.cells.values())

    def copy(self) -> "BlockWeights":
        return BlockWeights(dict(self.cells), self.other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockWeights) or self.other != other.other:
            return False
        return all(self.cells[c] == other.cells[c] for c in _ALL_CELLS if not _absent(*c))

    # ---- text syntax --------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, base: "BlockWeights | None" = None) -> "BlockWeights":
        """Apply the rules in ``text`` to a copy of ``base`` (all ones when None)."""
        weights = base.copy() if base is not None else cls()
        weights.apply(text)
        return weights

    def apply(self, text: str) -> None:
        for target, op, value in _split_rules(text):
            cells, other = _resolve_target(target)
            for cell in cells:
                self.cells[cell] = value if op == "=" else self.cells[cell] * value
            if other:
                self.other = value if op == "=" else self.other * value

    def to_text(self) -> str:
        """Compact rules that parse back to exactly this grid ("" when all ones)."""
        candidates = [_encode(self, by_rows=True), _encode(self, by_rows=False)]
        return min(candidates, key=len)

    # ---- dict form (recipes) ------------------------------------------------------------

    def apply_dict(self, data: dict) -> None:
        """``{"default": 1, "other": 0.5, "L03": {"q": 0.5}, "L04": 0.8, "adaLN": 0.5}``."""
        rules = []
        for target, value in data.items():
            if isinstance(value, dict):
                rules.extend(f"{target}.{comp}={_number(v, f'{target}.{comp}')}" for comp, v in value.items())
            else:
                rules.append(f"{target}={_number(value, target)}")
        # default first, as a user writing a dict would mean it.
        rules.sort(key=lambda rule: not rule.startswith(("default=", "all=", "*=")))
        self.apply(", ".join(rules))

    # ---- LBW vectors --------------------------------------------------------------------

    @classmethod
    def from_lbw(cls, values: list[float]) -> "BlockWeights":
        blocks = LBW_BLOCKS.get(len(values))
        if blocks is None:
            raise ZLoraError(f"an LBW vector needs {_LBW_FORMS}, got {len(values)}")
        weights = cls()
        for block, value in zip(blocks, values):
            for comp in model.COMPONENTS:
                weights.cells[(block, comp)] = float(value)
        return weights

    def to_lbw(self, size: int = 34) -> list[float]:
        """One value per block; refused when components of a block differ (LBW cannot hold it).

        34 values by default (what LBW tools know); the siglip refiners, Omni-only, are then left out
        as ``other`` is (lbw_left_out says so): the 36-value form keeps them."""
        if size not in LBW_BLOCKS:
            raise ZLoraError("LBW vectors have 30, 34 or 36 values")
        blocks = LBW_BLOCKS[size]
        values = []
        for block in blocks:
            row = {self.cells[(block, c)] for c in model.COMPONENTS if not _absent(block, c)}
            if len(row) != 1:
                raise ZLoraError(f"block {block} has different weights per component; an LBW vector holds "
                                 f"one value per block")
            values.append(row.pop())
        if size == 30 and self._weighted(model.TURBO_REFINER_BLOCKS):
            raise ZLoraError("refiner blocks are weighted; use the 34-value LBW form")
        return values  # "other" (and SR in 30/34) has no place in a vector: lbw_left_out says so

    def _weighted(self, blocks) -> bool:
        return any(self.cells[(b, c)] != 1.0 for b in blocks for c in model.COMPONENTS if not _absent(b, c))

    def lbw_left_out(self, size: int = 34) -> str | None:
        """What an LBW vector of these weights leaves out, in words (None when nothing)."""
        parts = []
        if self.other != 1.0:
            parts.append(f"'other' modules (embedders, final layer) weighted {format_value(self.other)} are not "
                         "part of an LBW vector: a loader applies them at full strength")
        if size != 36 and self._weighted(model.SIGLIP_BLOCKS):
            parts.append("the siglip refiners SR0, SR1 (Z-Image-Omni-Base only) are weighted but not part of a "
                         f"{size}-value LBW vector: read back, they are 1 (the 36-value form keeps them)")
        return "; ".join(parts) or None


def _absent(block: str, comp: str) -> bool:
    return not model.has_cell(block, comp)


def parse_lbw_lines(text: str) -> list[tuple[str, BlockWeights]]:
    """``NAME:v1,v2,…`` lines (blank lines and ``#`` comments skipped) -> named weights."""
    presets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.strip():
            raise ZLoraError(f"LBW line {number}: expected NAME:v1,v2,…")
        # LBW allows a trailing ":R" or other option after the vector; keep the vector only.
        vector = rest.split(":")[0]
        try:
            values = [float(v) for v in vector.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise ZLoraError(f"LBW line {number}: values must be numbers") from None
        try:
            presets.append((name.strip(), BlockWeights.from_lbw(values)))
        except ZLoraError as exc:
            raise ZLoraError(f"LBW line {number} ({name.strip()}): {exc}") from None
    return presets


def format_lbw_line(name: str, weights: BlockWeights, size: int = 34) -> str:
    return f"{name}:" + ",".join(format_value(v) for v in weights.to_lbw(size))


# ---- parsing helpers ----------------------------------------------------------------------


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ZLoraError(f"weight for {where!r} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ZLoraError(f"weight for {where!r} is not finite")
    return number


def _split_rules(text: str) -> list[tuple[str, str, float]]:
    """Split into (target, op, value); commas inside a target list are kept with it."""
    rules = []
    pending: list[str] = []
    for token in re.split(r"[,;\n]", text):
        token = token.strip()
        if not token:
            continue
        if "=" not in token:
            pending.append(token)
            continue
        head, value_text = token.rsplit("=", 1)
        op = "="
        if head.endswith("*"):
            head, op = head[:-1], "*="
        target = ",".join(pending + [head.strip()])
        pending = []
        if not head.strip():
            raise ZLoraError(f"weight rule {token!r} has no target")
        rules.append((target, op, _number(value_text.strip(), target)))
    if pending:
        raise ZLoraError(f"weight rule {','.join(pending)!r} has no '=value'")
    return rules


def _resolve_target(target: str) -> tuple[list[Cell], bool]:
    """Cells matched by a target, and whether it also sets ``other``."""
    target = target.replace(" ", "")
    if target in ("default", "all", "*"):
        return list(_ALL_CELLS), True
    if target == "other":
        return [], True
    if "." in target:
        block_part, comp_part = target.split(".", 1)
        blocks = _blocks(block_part.split(","), target)
        comps = _components(comp_part.split(","), target)
        if not blocks or not comps or blocks is None or comps is None:
            raise ZLoraError(f"unknown weight target {target!r}")
        return [(b, c) for b in blocks for c in comps], False
    blocks: list[str] = []
    comps: list[str] = []
    for item in target.split(","):
        as_comp = _components([item], target, strict=False)
        if as_comp:
            comps.extend(as_comp)
            continue
        as_block = _blocks([item], target, strict=False)
        if as_block:
            blocks.extend(as_block)
            continue
        raise ZLoraError(f"unknown weight target {item!r} (blocks are L00…L29, NR0, NR1, CR0, CR1, SR0, SR1; "
                         f"components are {', '.join(model.COMPONENTS)}, attn, ff)")
    blocks = blocks or list(model.BLOCKS)
    comps = comps or list(model.COMPONENTS)
    return [(b, c) for b in blocks for c in comps], False


def _components(items: list[str], target: str, strict: bool = True) -> list[str] | None:
    lookup = {c.lower(): c for c in model.COMPONENTS}
    lookup["adaln_modulation"] = "adaLN"
    found: list[str] = []
    for item in items:
        key = item.lower()
        if key in model.COMPONENT_GROUPS:
            found.extend(model.COMPONENT_GROUPS[key])
        elif key in lookup:
            found.append(lookup[key])
        elif strict:
            raise ZLoraError(f"unknown component {item!r} in weight target {target!r}")
        else:
            return None
    return list(dict.fromkeys(found))


def _blocks(items: list[str], target: str, strict: bool = True) -> list[str] | None:
    found: list[str] = []
    for item in items:
        upper = item.upper() if item.lower() != "refiners" else "refiners"
        if upper in model.BLOCK_GROUPS or item in model.BLOCK_GROUPS:
            found.extend(model.BLOCK_GROUPS.get(upper) or model.BLOCK_GROUPS[item])
        elif "-" in upper:
            start, _, end = upper.partition("-")
            start, end = _block_name(start), _block_name(end)
            if start is None or end is None:
                if strict:
                    raise ZLoraError(f"bad block range {item!r} in weight target {target!r}")
                return None
            i, j = model.BLOCKS.index(start), model.BLOCKS.index(end)
            if i > j:
                raise ZLoraError(f"block range {item!r} runs backwards")
            found.extend(model.BLOCKS[i:j + 1])
        elif _block_name(upper):
            found.append(_block_name(upper))
        elif strict:
            raise ZLoraError(f"unknown block {item!r} in weight target {target!r}")
        else:
            return None
    return list(dict.fromkeys(found))


def _block_name(text: str) -> str | None:
    """Accept ``L5`` as well as ``L05``; None when not a block of the model."""
    match = re.fullmatch(r"L(\d{1,2})", text)
    if match:
        text = f"L{int(match.group(1)):02d}"
    return text if _BLOCK_NAME.match(text) and text in model.BLOCKS else None


# ---- encoding -----------------------------------------------------------------------------


def _encode(weights: BlockWeights, by_rows: bool) -> str:
    """Rules for a grid: a default, then per-row (or per-column) values, then single cells."""
    values = Counter(v for cell, v in weights.cells.items() if not _absent(*cell))
    default = values.most_common(1)[0][0]
    rules: list[str] = []
    if default != 1.0 or weights.other != 1.0 and weights.other == default:
        rules.append(f"default={format_value(default)}")
    if weights.other != default:
        rules.append(f"other={format_value(weights.other)}")
    lines = model.BLOCKS if by_rows else model.COMPONENTS
    base: dict[str, float] = {}
    for line in lines:
        cells = [(line, c) for c in model.COMPONENTS] if by_rows else [(b, line) for b in model.BLOCKS]
        cells = [cell for cell in cells if not _absent(*cell)]
        base[line] = Counter(weights.cells[c] for c in cells).most_common(1)[0][0]
    if by_rows:
        rules.extend(_ranges(model.BLOCKS, {b: v for b, v in base.items() if v != default}))
    else:
        for value, comps in _group_by_value({c: v for c, v in base.items() if v != default}).items():
            rules.append(f"{','.join(comps)}={format_value(value)}")
    # Cells that differ from their line's value, grouped into block ranges with the same rules.
    per_block: dict[str, str] = {}
    for block in model.BLOCKS:
        deviations: dict[str, float] = {}
        for comp in model.COMPONENTS:
            if _absent(block, comp):
                continue
            line_value = base[block] if by_rows else base[comp]
            if weights.cells[(block, comp)] != line_value:
                deviations[comp] = weights.cells[(block, comp)]
        if deviations:
            present = [c for c in model.COMPONENTS if not _absent(block, c)]
            per_block[block] = "|".join(
                (f".{','.join(comps)}" if comps != present else "") + f"={format_value(v)}"
                for v, comps in _group_by_value(deviations).items())
    for block_range, joined in _ranges(model.BLOCKS, per_block, raw=True):
        for rule in joined.split("|"):
            rules.append(f"{block_range}{rule}")
    return ", ".join(rules)


def _group_by_value(mapping: dict[str, float]) -> dict[float, list[str]]:
    groups: dict[float, list[str]] = {}
    for key, value in mapping.items():
        groups.setdefault(value, []).append(key)
    return groups


def _ranges(order, mapping: dict, raw: bool = False):
    """Consecutive keys (in ``order``) with equal values -> ``A-B=value`` rules (or pairs)."""
    out = []
    run: list[str] = []

    def flush():
        if not run:
            return
        name = run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}"
        out.append((name, mapping[run[0]]) if raw else f"{name}={format_value(mapping[run[0]])}")

    for key in order:
        if key in mapping and run and mapping[run[-1]] == mapping[key] and _adjacent(run[-1], key):
            run.append(key)
            continue
        flush()
        run = [key] if key in mapping else []
    flush()
    return out


def _adjacent(a: str, b: str) -> bool:
    return model.BLOCKS.index(b) == model.BLOCKS.index(a) + 1
