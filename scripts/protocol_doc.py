"""Write the generated parts of docs/protocol.md from the code, so the document
cannot drift from what the daemon accepts and sends.

The operation and field tables come from the request models and reply types of
``supervisord/wire/api.py`` (their docstrings and field comments are the prose),
the error table from ``supervisord/errors.py``, the event table from every
``publish(...)`` and ``events.state(...)`` call under ``supervisord/``.  Each part
goes between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->``;
the hand-written text around the markers is kept.

    scripts/protocol-doc            rewrite docs/protocol.md
    scripts/protocol-doc --check    exit 1, saying so, if it is not up to date
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisord import errors  # noqa: E402
from supervisord.wire import api  # noqa: E402

DOC = ROOT / "docs" / "protocol.md"
_COMMON = ("v", "rid", "op")
_MARKER = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n).*?(<!-- END GENERATED: \2 -->)",
                     re.S)


class DocError(Exception):
    """Raised when the code lacks what the document needs (a docstring, a model)."""


# -- prose from the source: docstrings and the comments on fields -------------------------
def _field_notes(path: Path) -> dict[tuple[str, str], str]:
    """(class, field) -> the comment on the field's line, else the comment lines just
    above it (``type: ignore`` and ``noqa`` comments are not notes)."""
    source = path.read_text()
    trailing: dict[int, str] = {}
    whole: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if text.startswith(("type:", "noqa")):
            continue
        line = tok.start[0]
        if tok.line[:tok.start[1]].strip():
            trailing[line] = text
        else:
            whole[line] = text
    notes = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                line, above = item.lineno, []
                while line - 1 - len(above) in whole:
                    above.insert(0, whole[line - 1 - len(above)])
                note = trailing.get(line) or " ".join(above)
                if note:
                    notes[(node.name, item.target.id)] = note
    return notes


_NOTES = _field_notes(ROOT / "supervisord" / "wire" / "api.py")


def _note(cls: type, field: str) -> str:
    for base in cls.__mro__:
        if (base.__name__, field) in _NOTES:
            return _NOTES[(base.__name__, field)]
    return ""


def _doc(cls: type) -> str:
    text = cls.__dict__.get("__doc__")
    if not text:
        raise DocError(f"{cls.__name__} in {inspect.getsourcefile(cls)} has no docstring; "
                       "write one (what the operation does and what it replies), then run "
                       "scripts/protocol-doc again")
    return _markdown(" ".join(inspect.cleandoc(text).split()))


def _markdown(text: str) -> str:
    """reST's ``literal`` as Markdown's `literal`."""
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- request fields, from the models' JSON schema --------------------------------------
def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _kind(s: dict) -> str:
    if "const" in s:
        return f"`{json.dumps(s['const'])}`"
    if "enum" in s:
        return "one of " + ", ".join(f"`{v}`" for v in s["enum"])
    if "anyOf" in s:
        kinds = [_kind(b) for b in s["anyOf"]]
        return " or ".join(dict.fromkeys(kinds))
    kind = s.get("type")
    if kind == "array":
        return f"array of {_grouped(_kind(s['items']))}" if "items" in s else "array"
    if kind == "object":
        values = list(s.get("patternProperties", {}).values()) or [s.get("additionalProperties")]
        inner = _kind(values[0]) if isinstance(values[0], dict) else "any"
        return f"map of string to {inner}"
    return {"string": "string", "integer": "integer", "number": "number (int or float)",
            "boolean": "boolean", "null": "nil", None: "any"}[kind]


def _grouped(kind: str) -> str:
    return f"({kind})" if " or " in kind else kind


def _limits(s: dict) -> list[str]:
    out = []
    for branch in s.get("anyOf", [s]):
        lo, hi = branch.get("minimum"), branch.get("maximum")
        if lo is not None and hi is not None:
            out.append(f"{_num(lo)} to {_num(hi)}")
        elif lo is not None:
            out.append(f">= {_num(lo)}")
        elif hi is not None:
            out.append(f"<= {_num(hi)}")
        if "exclusiveMinimum" in branch:
            out.append(f"> {_num(branch['exclusiveMinimum'])}")
        for unit, low, high in (("characters", "minLength", "maxLength"),
                                ("items", "minItems", "maxItems")):
            if low in branch or high in branch:
                a, b = branch.get(low), branch.get(high)
                span = (f"{_num(a)} to {_num(b)}" if a is not None and b is not None
                        else f"at least {_num(a)}" if a is not None else f"at most {_num(b)}")
                out.append(f"{span} {unit}")
        if "pattern" in branch:
            out.append(f"matches `{branch['pattern']}`")
        if isinstance(branch.get("items"), dict) and _limits(branch["items"]):
            out.append("each: " + ", ".join(_limits(branch["items"])))
        if "propertyNames" in branch or "patternProperties" in branch:
            keys = _limits(branch.get("propertyNames", {}))
            for pattern, value in branch.get("patternProperties", {}).items():
                keys.append(f"matches `{pattern}`")
                out.append("keys: " + ", ".join(keys))
                out.append("values: " + ", ".join(_limits(value)))
    return out


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    return "nil" if value is None else f"`{json.dumps(value)}`"


def _request_table(model: type, skip: tuple[str, ...]) -> str:
    schema = model.model_json_schema()["properties"]
    rows = [(f"`{name}`", _kind(schema[name]), _default(field),
             "; ".join(_limits(schema[name])) or "-", _markdown(_note(model, name)) or "-")
            for name, field in model.model_fields.items() if name not in skip]
    return _table(("field", "type", "default", "limits", "meaning"), rows)


# -- replies, from the TypedDicts ---------------------------------------------------------
def _pytype(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_pytype(a) for a in args)
    if origin is list:
        return f"array of {_grouped(_pytype(args[0]))}" if args else "array"
    if t is dict or origin is dict:
        return "map"
    return {str: "string", int: "integer", float: "number", bool: "boolean",
            type(None): "nil"}.get(t, "any")


def _reply_table(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    optional = getattr(cls, "__optional_keys__", frozenset())
    rows = [(f"`{name}`", _pytype(hint), "sometimes" if name in optional else "always",
             _markdown(_note(cls, name)) or "-") for name, hint in hints.items()]
    return _table(("field", "type", "present", "meaning"), rows)


def _models() -> dict[str, type]:
    union = typing.get_args(api.Request)[0]
    models = {typing.get_args(m.model_fields["op"].annotation)[0]: m
              for m in typing.get_args(union)}
    if set(models) != set(api.OPERATIONS):
        raise DocError(f"OPERATIONS {sorted(api.OPERATIONS)} and the Request models "
                       f"{sorted(models)} in supervisord/wire/api.py differ")
    return models


def reply_types(model: type) -> list[type]:
    """The reply types (``...Reply`` in ``wire/api.py``) an operation's docstring names:
    its reply table, and what tests/test_protocol_doc.py holds a real reply to."""
    found = []
    for name in dict.fromkeys(re.findall(r"\b(\w+Reply)\b", _doc(model))):
        reply = getattr(api, name, None)
        if reply is None:
            raise DocError(f"{model.__name__}'s docstring names {name}, which "
                           "supervisord/wire/api.py does not define")
        found.append(reply)
    return found


def operations() -> str:
    parts = ["Fields every request may carry (`op` names the operation):", "",
             _request_table(api._Request, ()), ""]
    for op, model in sorted(_models().items(), key=lambda kv: api.OPERATIONS.index(kv[0])):
        text = _doc(model)
        parts += [f"### `{op}`", "", text, ""]
        if any(name not in _COMMON for name in model.model_fields):
            parts += [_request_table(model, _COMMON), ""]
        else:
            parts += ["No fields besides `op`, `v` and `rid`.", ""]
        for reply in reply_types(model):
            parts += [f"Reply `result` ({reply.__name__}):", "", _reply_table(reply), ""]
    return "\n".join(parts).rstrip() + "\n"


# -- errors ---------------------------------------------------------------------------------
def _constructed() -> dict[str, list[str]]:
    """Error class -> the modules under supervisord/ that raise or build it."""
    names = {cls.__name__ for cls in _error_classes()}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "supervisord").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in names:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT / "supervisord")))
    return {name: sorted(mods) for name, mods in found.items()}


def _error_classes(cls: type = errors.JobsupError) -> list[type]:
    """The wire's error classes: those of supervisord/errors.py only, so that what else
    happens to be imported (a handler's ``worker.errors``) never changes the table."""
    return [cls] + [c for sub in cls.__subclasses__() if sub.__module__ == errors.__name__
                    for c in _error_classes(sub)]


def error_codes() -> str:
    where = _constructed()
    rows = []
    for cls in _error_classes():
        parent = cls.__mro__[1].__name__ if cls is not errors.JobsupError else "-"
        rows.append((f"`{cls.code}`", f"`{cls.__name__}`", parent, _doc(cls),
                     ", ".join(f"`{m}`" for m in where.get(cls.__name__, [])) or "-"))
    return _table(("code", "class", "is a", "raised when", "raised in (supervisord/)"),
                  rows) + "\n"


# -- events -----------------------------------------------------------------------------
def _topic(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return f"`{node.value}`"
    if isinstance(node, ast.JoinedStr):
        return "`" + "".join(
            v.value if isinstance(v, ast.Constant) else ast.unparse(v.value).split(".")[-1].upper()
            for v in node.values) + "`"
    return "the job id"


def _event_calls() -> dict[tuple[str, str], dict]:
    """(event, status) -> topic, fields and modules, from every publish/state call."""
    found: dict[tuple[str, str], dict] = {}
    for path in sorted((ROOT / "supervisord").rglob("*.py")):
        if path.name == "events.py":
            continue
        module = str(path.relative_to(ROOT / "supervisord"))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
                    and len(node.args) >= 2):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            fields = [k.arg for k in node.keywords if k.arg]
            if name == "state" and "events" in ast.unparse(node.func):
                event, status, topic = "state", node.args[1], "the job id"
            elif name == "publish" and isinstance(node.args[1], ast.Constant):
                event, topic = node.args[1].value, _topic(node.args[0])
                status = next((k.value for k in node.keywords if k.arg == "status"), None)
                fields = [f for f in fields if f != "status"]
            else:
                continue
            shown = (f"`{status.value}`" if isinstance(status, ast.Constant)
                     else "-" if status is None else "varies")
            entry = found.setdefault((event, shown), {"topic": topic, "fields": {},
                                                       "modules": set()})
            entry["fields"].update(dict.fromkeys(fields))
            entry["modules"].add(module)
    return found


def events() -> str:
    rows = [(f"`{event}`", status, info["topic"],
             ", ".join(f"`{f}`" for f in info["fields"]) or "-",
             ", ".join(f"`{m}`" for m in sorted(info["modules"])))
            for (event, status), info in sorted(_event_calls().items())]
    return _table(("event", "status", "topic (first frame)", "fields besides event, job, t",
                   "sent from (supervisord/)"), rows) + "\n"


# -- the document -------------------------------------------------------------------------
def render(text: str) -> str:
    """``text`` with every generated part replaced by what the code says now."""
    parts = {"operations": operations, "errors": error_codes, "events": events}
    seen = set()

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in parts:
            raise DocError(f"docs/protocol.md has a generated part {name!r} that "
                           f"scripts/protocol_doc.py does not know; known: {', '.join(parts)}")
        seen.add(name)
        return match.group(1) + parts[name]() + match.group(3)

    out = _MARKER.sub(fill, text)
    if missing := set(parts) - seen:
        raise DocError(f"docs/protocol.md lacks the markers of {', '.join(sorted(missing))}")
    return out


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: scripts/protocol-doc [--check]", file=sys.stderr)
        return 2
    current = DOC.read_text()
    try:
        wanted = render(current)
    except DocError as exc:
        print(f"protocol-doc: {exc}", file=sys.stderr)
        return 1
    if check:
        if wanted != current:
            print("protocol-doc: docs/protocol.md is out of date with the code; run "
                  "scripts/protocol-doc and commit the result", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        DOC.write_text(wanted)
        print("protocol-doc: docs/protocol.md rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
