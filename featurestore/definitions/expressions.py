"""Expressions over earlier features: parsed by a whitelisting parser, never evaluated as Python.

Grammar: numbers, feature names, `+ - * /`, parentheses, unary `-` and `+`, `abs(x)`,
`min(a, b, ...)`, `max(a, b, ...)`. Python's own parser (`ast`, mode "eval") reads the text;
every node that is not in that list is refused, and nothing is compiled or run. The result is
a small tree of tuples that the engine evaluates on arrays (`featurestore/features/ops.py`).
"""

from __future__ import annotations

import ast
import math

MAX_LENGTH = 2_000  # characters
MAX_DEPTH = 64  # nesting

Node = tuple  # ("num", x) | ("ref", name) | ("neg", a) | (op, a, b) | (fn, (args...))
BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
FUNCTIONS = {"abs": (1, 1), "min": (2, 64), "max": (2, 64)}


class ExpressionError(ValueError):
    """The text is not an expression of the grammar; the message says what is not allowed."""


def parse_expression(text: object) -> Node:
    if not isinstance(text, str):
        raise ExpressionError("expected a string")
    if not text.strip():
        raise ExpressionError("empty expression")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error at column {exc.offset or 0}") from None
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting
        raise ExpressionError("not an expression") from None
    return _node(tree.body, 0)


def _node(node: ast.AST, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"nested more than {MAX_DEPTH} deep")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExpressionError(f"only numbers are allowed as constants, not {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ExpressionError("constants must be finite")
        return ("num", number)
    if isinstance(node, ast.Name):
        return ("ref", node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _node(node.operand, depth + 1)
        return ("neg", inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        return (BINARY[type(node.op)], _node(node.left, depth + 1), _node(node.right, depth + 1))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise ExpressionError("the only functions are abs, min and max")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{name}() takes plain arguments only")
        low, high = FUNCTIONS[name]
        if not low <= len(node.args) <= high:
            wanted = "one argument" if high == 1 else f"{low} to {high} arguments"
            raise ExpressionError(f"{name}() takes {wanted}")
        args = tuple(_node(a, depth + 1) for a in node.args)
        return (name, args[0]) if name == "abs" else (name, args)
    raise ExpressionError(f"{_what(node)} is not allowed (numbers, names, + - * /, abs, min, max)")


def _what(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return {
        ast.Attribute: "attribute access",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.Subscript: "indexing",
        ast.Lambda: "lambda",
        ast.IfExp: "if/else",
    }.get(type(node), type(node).__name__)


def references(node: Node) -> list[str]:
    """The feature names an expression reads, in order of appearance (repeats kept once)."""
    found: list[str] = []

    def walk(n: Node) -> None:
        kind = n[0]
        if kind == "ref":
            if n[1] not in found:
                found.append(n[1])
        elif kind in ("neg", "abs"):
            walk(n[1])
        elif kind in ("min", "max"):
            for a in n[1]:
                walk(a)
        elif kind in SYMBOL:
            walk(n[1])
            walk(n[2])

    walk(node)
    return found


def canonical(node: Node) -> str:
    """One spelling per expression (fully parenthesised), for the content hash."""
    kind = node[0]
    if kind == "num":
        return repr(node[1])
    if kind == "ref":
        return node[1]
    if kind == "neg":
        return f"(-{canonical(node[1])})"
    if kind == "abs":
        return f"abs({canonical(node[1])})"
    if kind in ("min", "max"):
        return f"{kind}({', '.join(canonical(a) for a in node[1])})"
    return f"({canonical(node[1])} {SYMBOL[kind]} {canonical(node[2])})"
