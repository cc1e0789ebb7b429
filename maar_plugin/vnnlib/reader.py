"""Read the VNN-LIB v1 subset that VNN-COMP benchmarks use into a :class:`VnnlibProperty`.

Supported: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; ``;`` comments anywhere;
``(assert F)`` where F is built from ``and``, ``or`` and comparisons ``<= >= < > =`` between linear
terms (numbers in any float notation, variables, ``(+ ...)``, ``(- a)``, ``(- a b ...)``, ``(* c t)``
with a constant factor). Top-level asserts are conjoined and the whole formula is brought into
disjunctive normal form. Strict comparisons are read as non-strict: over the reals the closure
differs only on a measure-zero boundary, and every verifier in VNN-COMP treats them the same way.

Input constraints must be bounds on single variables (a box). A disjunction of several different
input boxes (some VNN-COMP benchmarks split the input that way) is returned by
:func:`read_vnnlib_cases` as one property per box; :func:`read_vnnlib` rejects it, since one
:class:`VnnlibProperty` has one box. Every problem is a :class:`MaarError` "path:line: reason".
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maar_plugin.errors import MaarError
from maar_plugin.vnnlib.property import Conjunction, VnnlibProperty

_TOKEN = re.compile(r";[^\n]*|\n|\(|\)|[^\s();]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")
_HEADER_COMMENT = re.compile(r";\s*([^:\n]+?)\s*:\s*(.*?)\s*$")
_MAX_DISJUNCTS = 100_000

Variable = tuple[str, int]  # ("X", i) or ("Y", j)


_Atom = str  # a token; the line it came from is in its enclosing _List's ``lines``


class _List(list):
    """A parenthesised s-expression with the line of its opening parenthesis and, in ``lines``, the line of
    each element (plain strings for atoms: far cheaper than a string subclass that carries its line)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []

    def add(self, element: _List | _Atom, line: int) -> None:
        self.append(element)
        self.lines.append(line)


@dataclass
class _Linear:
    """``sum(coefficients[v] * v) + constant``."""

    coefficients: dict[Variable, float]
    constant: float

    def scaled(self, factor: float) -> _Linear:
        return _Linear({v: factor * c for v, c in self.coefficients.items()}, factor * self.constant)

    def plus(self, other: _Linear) -> _Linear:
        coefficients = dict(self.coefficients)
        for variable, coefficient in other.coefficients.items():
            coefficients[variable] = coefficients.get(variable, 0.0) + coefficient
        return _Linear(coefficients, self.constant + other.constant)


@dataclass
class _Constraint:
    """``linear <= 0`` from the assert on ``line``."""

    linear: _Linear
    line: int


@dataclass
class _Box:
    """Input bounds with the line that set each one (for error messages)."""

    lower: np.ndarray
    upper: np.ndarray
    lower_line: list[int]
    upper_line: list[int]

    @staticmethod
    def unbounded(size: int) -> _Box:
        return _Box(np.full(size, -np.inf), np.full(size, np.inf), [0] * size, [0] * size)

    def copy(self) -> _Box:
        return _Box(self.lower.copy(), self.upper.copy(), list(self.lower_line), list(self.upper_line))


class _Reader:
    """One file's parse: tokenizer, s-expression parser, formula to DNF, DNF to properties."""

    def __init__(self, path: Path, num_inputs: int | None, num_outputs: int | None) -> None:
        self.path = path
        self.expected_inputs = num_inputs
        self.expected_outputs = num_outputs
        self.declared: dict[Variable, int] = {}  # variable -> line of its declaration
        self.comments: dict[str, str] = {}

    def fail(self, line: int, reason: str) -> MaarError:
        return MaarError(f"{self.path}:{line}: {reason}")

    # ---- tokens and s-expressions -------------------------------------------------------------
    def parse(self, text: str) -> list[_List]:
        """Top-level s-expressions, each a nested _List of _Atom."""
        line = 1
        stack: list[_List] = []
        top: list[_List] = []
        in_header = True
        for match in _TOKEN.finditer(text):
            token = match.group()
            if token == "\n":
                line += 1
            elif token[0] == ";":
                header = _HEADER_COMMENT.match(token)
                if in_header and header:
                    self.comments[header.group(1)] = header.group(2)
            elif token == "(":
                in_header = False
                stack.append(_List(line))
            elif token == ")":
                if not stack:
                    raise self.fail(line, "unbalanced parentheses: ')' without '('")
                finished = stack.pop()
                if stack:
                    stack[-1].add(finished, finished.line)
                else:
                    top.append(finished)
            elif stack:
                stack[-1].add(token, line)
            else:
                raise self.fail(line, f"'{token}' outside parentheses")
        if stack:
            raise self.fail(stack[-1].line, "unbalanced parentheses: '(' never closed")
        return top

    # ---- commands ------------------------------------------------------------------------------
    def read(self, text: str) -> list[VnnlibProperty]:
        common: list[_Constraint] = []  # asserts without a disjunction, conjoined in place
        disjunctive: list[list[list[_Constraint]]] = []  # asserts with several disjuncts
        for command in self.parse(text):
            head = self.head(command, command.line)
            if head == "declare-const":
                self.declare(command)
            elif head == "assert":
                if len(command) != 2:
                    raise self.fail(command.line, "assert takes exactly one formula")
                dnf = self.formula(command[1], command.lines[1])
                if len(dnf) == 1:
                    common.extend(dnf[0])
                else:
                    disjunctive.append(dnf)
            else:
                raise self.fail(command.line, f"unsupported command '{head}'")
        self.check_declarations()
        return self.properties(common, disjunctive)

    def head(self, expression: _List | _Atom, line: int) -> str:
        """The operator of ``expression`` (which starts on ``line``)."""
        if not isinstance(expression, _List) or not expression or isinstance(expression[0], _List):
            raise self.fail(line, f"expected '(operator ...)', found '{self.show(expression)}'")
        return expression[0]

    def declare(self, command: _List) -> None:
        if len(command) != 3 or command[2] != "Real" or isinstance(command[1], _List):
            raise self.fail(command.line, f"expected '(declare-const X_i Real)', found '{self.show(command)}'")
        match = _VARIABLE.fullmatch(command[1])
        if not match:
            raise self.fail(command.line, f"variable '{command[1]}' is not named X_i (input) or Y_j (output)")
        variable = (match.group(1), int(match.group(2)))
        if variable in self.declared:
            raise self.fail(command.line, f"{command[1]} declared twice (first on line {self.declared[variable]})")
        self.declared[variable] = command.line

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.declared if k == kind)

    def check_declarations(self) -> None:
        for kind, expected, what in (("X", self.expected_inputs, "inputs"), ("Y", self.expected_outputs, "outputs")):
            indices = sorted(i for k, i in self.declared if k == kind)
            if not indices:
                raise self.fail(1, f"no {kind}_ variables declared")
            if indices != list(range(len(indices))):
                missing = min(set(range(indices[-1] + 1)) - set(indices))
                raise self.fail(self.declared[(kind, indices[-1])], f"{kind}_{missing} is not declared")
            if expected is not None and len(indices) != expected:
                raise self.fail(1, f"declares {len(indices)} {what}, the model has {expected}")

    # ---- formulas ------------------------------------------------------------------------------
    def formula(self, expression: _List | _Atom, line: int) -> list[list[_Constraint]]:
        """Disjunctive normal form: a list of disjuncts, each a list of constraints ``linear <= 0``."""
        operator = self.head(expression, line)
        assert isinstance(expression, _List)  # head() raised otherwise
        arguments = list(zip(expression[1:], expression.lines[1:]))
        if operator in ("and", "or") and not arguments:
            raise self.fail(expression.line, f"'{operator}' without arguments")
        if operator == "or":
            dnf = [disjunct for argument in arguments for disjunct in self.formula(*argument)]
        elif operator == "and":
            dnf = [[]]
            for argument in arguments:
                part = self.formula(*argument)
                if len(part) == 1:  # the common case: extend in place instead of copying
                    for disjunct in dnf:
                        disjunct.extend(part[0])
                    continue
                dnf = [left + right for left in dnf for right in part]
                if len(dnf) > _MAX_DISJUNCTS:
                    raise self.fail(expression.line, f"formula expands to over {_MAX_DISJUNCTS} disjuncts")
        elif operator in ("<=", ">=", "<", ">", "="):
            dnf = [self.comparison(operator, expression)]
        else:
            raise self.fail(expression.line, f"unsupported construct '{operator}'")
        return dnf

    def comparison(self, operator: str, expression: _List) -> list[_Constraint]:
        if len(expression) != 3:
            raise self.fail(expression.line, f"'{operator}' needs exactly two operands")
        left, right = self.term(expression[1], expression.lines[1]), self.term(expression[2], expression.lines[2])
        less = left.plus(right.scaled(-1.0))  # left - right
        line = expression.line
        if operator in ("<=", "<"):
            constraints = [_Constraint(less, line)]
        elif operator in (">=", ">"):
            constraints = [_Constraint(less.scaled(-1.0), line)]
        else:
            constraints = [_Constraint(less, line), _Constraint(less.scaled(-1.0), line)]
        for constraint in constraints:
            constraint.linear.coefficients = {v: c for v, c in constraint.linear.coefficients.items() if c != 0.0}
            if not constraint.linear.coefficients:
                raise self.fail(line, "comparison between constants (no variable left)")
        return constraints

    def term(self, expression: _List | _Atom, line: int) -> _Linear:
        if not isinstance(expression, _List):
            return self.atom(expression, line)
        operator = self.head(expression, line)
        operands = [self.term(*operand) for operand in zip(expression[1:], expression.lines[1:])]
        if not operands:
            raise self.fail(expression.line, f"'{operator}' without operands")
        if operator == "+":
            result = operands[0]
            for operand in operands[1:]:
                result = result.plus(operand)
            return result
        if operator == "-":
            if len(operands) == 1:
                return operands[0].scaled(-1.0)
            result = operands[0]
            for operand in operands[1:]:
                result = result.plus(operand.scaled(-1.0))
            return result
        if operator == "*":
            constants = [o.constant for o in operands if not o.coefficients]
            variables = [o for o in operands if o.coefficients]
            if len(variables) > 1:
                raise self.fail(expression.line, "product of variables (only linear terms are supported)")
            factor = math.prod(constants)
            return variables[0].scaled(factor) if variables else _Linear({}, factor)
        raise self.fail(expression.line, f"unsupported construct '{operator}'")

    def atom(self, atom: _Atom, line: int) -> _Linear:
        if _NUMBER.fullmatch(atom):
            return _Linear({}, float(atom))
        match = _VARIABLE.fullmatch(atom)
        if match:
            variable = (match.group(1), int(match.group(2)))
            if variable not in self.declared:
                raise self.fail(line, f"unknown variable {atom} (not declared before use)")
            return _Linear({variable: 1.0}, 0.0)
        raise self.fail(line, f"unknown variable or malformed number '{atom}'")

    # ---- DNF to properties ---------------------------------------------------------------------
    def properties(self, common: list[_Constraint], disjunctive: list[list[list[_Constraint]]]) -> list[VnnlibProperty]:
        """One property per distinct input box, each with the output disjuncts that share that box."""
        num_inputs, num_outputs = self.count("X"), self.count("Y")
        common_box = _Box.unbounded(num_inputs)
        self.tighten(common_box, common)
        common_rows = [c for c in common if self.kind(c) == "Y"]
        by_box: dict[bytes, tuple[_Box, list[Conjunction]]] = {}
        for number, combination in enumerate(itertools.product(*disjunctive)):
            if number >= _MAX_DISJUNCTS:
                raise self.fail(1, f"formula expands to over {_MAX_DISJUNCTS} disjuncts")
            constraints = [c for disjunct in combination for c in disjunct]
            box = common_box.copy()
            self.tighten(box, constraints)
            self.check_box(box)
            rows = common_rows + [c for c in constraints if self.kind(c) == "Y"]
            key = box.lower.tobytes() + box.upper.tobytes()
            by_box.setdefault(key, (box, []))[1].append(self.conjunction(rows, num_outputs))
        return [VnnlibProperty(box.lower, box.upper, unsafe, num_outputs, dict(self.comments))
                for box, unsafe in by_box.values()]

    def kind(self, constraint: _Constraint) -> str:
        """"X" for an input constraint, "Y" for an output constraint; mixed ones are rejected."""
        kinds = {kind for kind, _ in constraint.linear.coefficients}
        if len(kinds) > 1:
            raise self.fail(constraint.line, "constraint mixes inputs X and outputs Y")
        return kinds.pop()

    def tighten(self, box: _Box, constraints: list[_Constraint]) -> None:
        """Intersect the box with the single-variable input bounds among ``constraints``."""
        for constraint in constraints:
            if self.kind(constraint) != "X":
                continue
            if len(constraint.linear.coefficients) != 1:
                raise self.fail(constraint.line, "input constraint on several variables (only boxes are supported)")
            ((_, index), coefficient), = constraint.linear.coefficients.items()
            value = -constraint.linear.constant / coefficient  # coefficient * x + constant <= 0
            if coefficient > 0 and value < box.upper[index]:
                box.upper[index], box.upper_line[index] = value, constraint.line
            elif coefficient < 0 and value > box.lower[index]:
                box.lower[index], box.lower_line[index] = value, constraint.line

    def check_box(self, box: _Box) -> None:
        """Every input needs a finite lower and upper bound, lower <= upper (first offender reported)."""
        for bad, problem in ((~np.isfinite(box.lower), "no finite lower bound"),
                             (~np.isfinite(box.upper), "no finite upper bound")):
            if bad.any():
                index = int(np.argmax(bad))
                raise self.fail(self.declared[("X", index)], f"X_{index} has {problem}")
        empty = box.lower > box.upper
        if empty.any():
            index = int(np.argmax(empty))
            line = max(box.lower_line[index], box.upper_line[index])
            lower, upper = float(box.lower[index]), float(box.upper[index])
            raise self.fail(line, f"X_{index} has lower bound {lower!r} > upper bound {upper!r}")

    def conjunction(self, rows: list[_Constraint], num_outputs: int) -> Conjunction:
        coefficients = np.zeros((len(rows), num_outputs))
        bounds = np.zeros(len(rows))
        for row, constraint in enumerate(rows):
            for (_, index), coefficient in constraint.linear.coefficients.items():
                coefficients[row, index] = coefficient
            bounds[row] = -constraint.linear.constant
        return Conjunction(coefficients, bounds)

    @staticmethod
    def show(expression: _List | _Atom) -> str:
        if not isinstance(expression, _List):
            return expression
        text = "(" + " ".join(_Reader.show(e) for e in expression) + ")"
        return text if len(text) <= 60 else text[:57] + "..."


def read_vnnlib_cases(path: str | Path, num_inputs: int | None = None,
                      num_outputs: int | None = None) -> list[VnnlibProperty]:
    """All (input box, unsafe region) cases of a file; the property holds iff it holds for every case."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MaarError(f"{path}: cannot read VNN-LIB file ({error})") from None
    return _Reader(path, num_inputs, num_outputs).read(text)


def read_vnnlib(path: str | Path, num_inputs: int | None = None, num_outputs: int | None = None) -> VnnlibProperty:
    """Read a VNN-LIB file with one input box; ``num_inputs``/``num_outputs`` check the declarations."""
    cases = read_vnnlib_cases(path, num_inputs, num_outputs)
    if len(cases) != 1:
        raise MaarError(f"{path}:1: disjunction of {len(cases)} different input boxes is not supported here; "
                        "use read_vnnlib_cases to verify each box separately")
    return cases[0]
