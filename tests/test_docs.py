"""The Python examples of docs/*.md run as written, and give what the text says; the
signatures docs/core-api.md writes are the code's."""

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib.pyplot as plt
import pytest
import torch

import aetk
from aetk import cli

DOCS = Path(__file__).parents[1] / "docs"


def run_blocks(name: str) -> dict:
    """One namespace for all of a page's blocks, as a reader pasting them into one session."""
    path = DOCS / name
    ns: dict = {}
    for code in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
        exec(compile(code, str(path), "exec"), ns)
    return ns


def test_geometry_examples_run_in_order() -> None:
    ns = run_blocks("geometry.md")
    fit = ns["fit"]  # the graph start's: never longer than the straight line
    assert bool((fit.length <= fit.line_length * (1 + 1e-6)).all())
    assert ns["D"].shape == (20, 20) and ns["D2"].shape == (20, 10)
    assert torch.allclose(ns["D"].diagonal(), torch.zeros(20))
    z_path, x_path = ns["z_path"], ns["x_path"]
    assert z_path.shape == (4, 10, 2) and x_path.shape == (4, 10, 64)
    assert torch.allclose(z_path[:, 0], ns["z_start"])
    assert torch.allclose(z_path[:, -1], ns["z_end"])
    assert ns["paths"].points.shape[0] == 4 and bool(ns["paths"].found.all())
    assert torch.allclose(ns["end"], ns["z_end"], atol=1e-3)  # the log map's shot comes back
    assert ns["path"].transported is not None and ns["v_t"].shape[0] == 4
    assert ns["centre"].shape == (2,) and ns["spray"].points.shape[-1] == 2
    assert ns["R"].shape == (20, 2, 2, 2, 2)
    assert torch.allclose(ns["k"], ns["K"], rtol=1e-3, atol=1e-5)  # sectional = Gaussian in 2-D
    assert ns["grid"].gaussian_curvature.shape == (64, 64)


def test_zarr_layout_example_reads_the_pipeline_stores(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli.main(["preprocess", "--source", "digits", "--n-samples", "200", "--transforms",
              "scale01", "--validation-fraction", "0.25", "--out", "data.zarr"])
    cli.main(["train", "--data", "data.zarr", "--model", "rhvae", "--likelihood", "bernoulli",
              "--hidden", "32", "--epochs", "1", "--batch-size", "32", "--options",
              '{"centroids": 16}', "--no-progress", "--checkpoint-dir", "ckpt",
              "--out", "model", "--history", "h.tsv"])
    latent = "results/latent/rhvae-bernoulli.zarr"
    cli.main(["encode", "--data", "data.zarr", "--model", "model", "--n-importance", "3",
              "--n-scored", "10", "--out", latent])
    cli.main(["geodesics", "--model", "model", "--latent", latent, "--n-pairs", "2",
              "--n-points", "8", "--grid-size", "9", "--spray", "0",
              "--out", "results/geodesics/rhvae-bernoulli.zarr"])
    ns = run_blocks("zarr-layout.md")
    assert ns["lat"].attrs["model"] == "rhvae"
    assert ns["val"].sizes["sample"] == 50 and ns["val"].elbo.attrs["units"] == "nats"
    assert ns["first"].shape == (64,)
    assert ns["geo"].log_volume.shape == (9, 9)
    plt.close("all")


# Calls in core-api.md that show some arguments or options, not the whole signature: only
# the keywords they name are checked (that the object takes them, with those defaults).
EXAMPLES = {
    "Conditioned(net, k)",  # wrapping a user's network
    "GaussianDecoder(sigma=1.0)",  # each built-in decoder's own options, beside the shared
    "LearnedGaussianDecoder(split=False)",  # ones the text lists once
    "CategoricalDecoder(n_classes=...)",
    'NegativeBinomialDecoder(dispersion="feature" | "sample")',
    "MultinomialDecoder(total_count=1)",
}
P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
ELIDED = object()  # `name=...`: a default not written


def _resolve(root: Any, parts: list[str]) -> tuple[Any, bool]:
    """`root.a.b...` (importing submodules on the way), and whether it is a method read
    off its class (whose signature then starts with self); None where there is none."""
    obj = parent = root
    for part in parts:
        parent = obj
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, ModuleType):
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                return None, False
        else:
            return None, False
    method = inspect.isclass(parent) and inspect.isfunction(
        inspect.getattr_static(parent, parts[-1], None))
    return obj, method


def _doc_signatures(text: str) -> Iterator[tuple[str, str, list[P], dict]]:
    """`(span, its parameters, the object's parameters, its module's names)` for each code
    span `name(...)` (a ` -> result` after it allowed) that names an aetk object: by a
    qualified name (`aetk.fit`, `models.lvae.LadderPosterior`), as a method of a class an
    earlier span of the same list item names (`sample(n)` after `VAE(...)`), or in the
    section's module (`## Geometry (`aetk.geometry`)`), a module the item names, or aetk."""
    module = None
    for block in re.split(r"\n(?=## |- )", text):
        if block.startswith("## "):
            named = re.match(r"## .*\(`(aetk[\w.]*)`\)", block)
            module = named[1] if named else None
            continue
        roots = [_resolve(aetk, m.split(".")[1:])[0] for m in
                 (module, *re.findall(r"`(aetk\.[\w.]+)`", block)) if m]
        roots = [r for r in roots if isinstance(r, ModuleType)] + [aetk]
        classes: list[type] = []
        for span in re.findall(r"`([^`]+)`", block):
            span = " ".join(span.split())
            call = _call(span)
            if call is None:
                continue
            parts = call[0].split(".")
            if parts[0] == "aetk":
                found = [_resolve(aetk, parts[1:])]
            else:
                found = [_resolve(r, parts) for r in
                         (classes[::-1] if len(parts) == 1 else []) + roots]
            obj, method = next(((o, m) for o, m in found if callable(o) and str(
                getattr(o, "__module__", "")).startswith("aetk")), (None, False))
            if obj is None:
                continue
            if inspect.isclass(obj):
                classes.append(obj)
            params = list(inspect.signature(obj).parameters.values())[int(method):]
            yield span, call[1], params, vars(inspect.getmodule(obj))


def _call(span: str) -> tuple[str, str] | None:
    """The name and the parameters of a span `name(...)` or `name(...) -> result`; None
    for other spans (`f(x) - g(y)`, `q(z) = ...`)."""
    name = re.match(r"[A-Za-z_][\w.]*\(", span)
    depth = 0
    for i in range(name.end() - 1 if name else len(span), len(span)):
        depth += {"(": 1, ")": -1}.get(span[i], 0)
        if depth == 0:
            rest = span[i + 1:]
            return (name[0][:-1], span[name.end():i]) if not rest or rest.startswith(
                " -> ") else None
    return None


def _items(params: str) -> list[str]:
    """A parameter list split at its top-level commas."""
    items, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(params):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(params[start:i].strip())
            start = i + 1
    return [*items, params[start:].strip()] if params.strip() else items


def _value(node: ast.expr, names: dict) -> Any:
    """The value a default is written as: a literal, `...` (not written), a name of the
    object's module (`PAPER_SCALES`), or `a | b | ...` (a; the others are further values
    the parameter takes); ValueError for another expression (an example's `like=x`)."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        node = node.left
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return ELIDED
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(node.id)
        return names[node.id]
    return ast.literal_eval(node)


def _same(doc: Any, real: Any) -> bool:
    """Equal defaults (1 for 1.0, not True for 1)."""
    if doc is ELIDED:
        return True
    if isinstance(doc, tuple | list) and isinstance(real, tuple | list):
        return len(doc) == len(real) and all(map(_same, doc, real))
    if isinstance(doc, bool) or isinstance(real, bool):
        return type(doc) is type(real) and doc == real
    return doc == real and isinstance(doc, int | float) == isinstance(real, int | float)


def _parse(params: str, names: dict) -> list[tuple[str, Any, Any]] | None:
    """`(name, kind, default)` of each parameter written, `("...", None, None)` for an
    elision, kind None where an elision before it leaves the kind open; None for an
    example call (an argument or default that is an expression)."""
    out, kind, elided = [], P.POSITIONAL_OR_KEYWORD, False
    for item in _items(params):
        if item in ("...", "*"):
            out += [("...", None, None)] if item == "..." else []
            kind, elided = (P.KEYWORD_ONLY, False) if item == "*" else (kind, True)
            continue
        if item == "/":
            out = [(n, P.POSITIONAL_ONLY if k else k, d) for n, k, d in out]
            continue
        try:
            args = ast.parse(f"def _({item}): pass").body[0].args
            star = args.vararg or args.kwarg
            default = (_value(args.defaults[0], names) if args.defaults and not star
                       else P.empty)
        except (SyntaxError, ValueError):
            return None
        if star:
            out.append((star.arg, P.VAR_POSITIONAL if args.vararg else P.VAR_KEYWORD, P.empty))
            kind, elided = P.KEYWORD_ONLY, False
        else:
            out.append((args.args[0].arg, None if elided else kind, default))
    return out


def _example_problems(span: str, params: str, real: list[P]) -> list[str]:
    """An example call: each keyword it names is one the object takes, a literal value
    given its default."""
    try:
        call = ast.parse(f"_({params})", mode="eval").body
    except SyntaxError:
        return [f"`{span}`: neither a signature nor a call in Python's syntax"]
    by_name = {p.name: p for p in real}
    takes_any = any(p.kind is P.VAR_KEYWORD for p in real)
    problems = []
    for kw in call.keywords:
        p = by_name.get(kw.arg)
        if p is None or p.kind is P.POSITIONAL_ONLY:
            if kw.arg is not None and not takes_any:
                problems.append(f"`{span}`: takes no keyword {kw.arg!r}")
            continue
        try:
            value = _value(kw.value, {})
        except ValueError:  # a variable: an example's argument
            continue
        if value is not ELIDED and (p.default is P.empty or not _same(value, p.default)):
            problems.append(f"`{span}`: {kw.arg}={ast.unparse(kw.value)}, but the code's "
                            f"default is {'none' if p.default is P.empty else repr(p.default)}")
    return problems


def _signature_problems(span: str, written: list, real: list[P]) -> list[str]:
    """A call by bare names (`sample(n)`) names the leading positional parameters, the
    required ones at least; otherwise a signature: every parameter, in order, of the same
    kind and default, `...` standing for any run of them."""
    have = [(p.name, p.kind, p.default) for p in real]
    names = [n for n, _, _ in have]
    if all(k is P.POSITIONAL_OR_KEYWORD and d is P.empty for _, k, d in written):
        leading = [n for n, k, _ in have if k in POSITIONAL]
        required = [n for n, k, d in have if k in POSITIONAL and d is P.empty]
        doc = [n for n, _, _ in written]
        if doc != leading[:len(doc)] or len(doc) < len(required):
            return [f"`{span}`: the code's leading parameters are ({', '.join(leading)}), "
                    f"the required ones ({', '.join(required)})"]
        return []
    groups: list[list] = [[]]
    for entry in written:
        if entry[0] == "...":
            groups.append([])
        else:
            groups[-1].append(entry)
    problems, i = [], 0
    for g, group in enumerate(groups):
        if not group:
            continue
        if g > 0 and group[0][0] not in names[i:]:
            return [f"`{span}`: no parameter {group[0][0]!r} after ({', '.join(names[:i])})"]
        start = names.index(group[0][0], i) if g > 0 else 0
        window = have[start:start + len(group)]
        if [n for n, _, _ in window] != [n for n, _, _ in group]:
            return [f"`{span}`: parameters ({', '.join(n for n, _, _ in group)}) where the "
                    f"code has ({', '.join(n for n, _, _ in window)})"]
        kinds = [(n, k, rk) for (n, k, _), (_, rk, _) in zip(group, window, strict=True)
                 if k is not None and k != rk]
        if kinds:  # the first: a missing `*` would make every later one differ too
            n, k, rk = kinds[0]
            problems.append(f"`{span}`: {n} is {rk.description} in the code, "
                            f"{k.description} here")
        for (n, _, d), (_, _, rd) in zip(group, window, strict=True):
            if not _same(d, rd):
                problems.append(f"`{span}`: {n}'s default is "
                                f"{'none' if rd is P.empty else repr(rd)} in the code, "
                                f"{'none' if d is P.empty else repr(d)} here")
        i = start + len(group)
    if groups[-1] and i < len(have):
        problems.append(f"`{span}`: the code has more parameters: {', '.join(names[i:])}")
    return problems


def signature_problems(text: str) -> tuple[list[str], int]:
    """Where the signatures `text` writes differ from the code's, and how many spans it
    checked."""
    problems, n = [], 0
    for span, params, real, names in _doc_signatures(text):
        written = None if span in EXAMPLES else _parse(params, names)
        problems += (_example_problems(span, params, real) if written is None
                     else _signature_problems(span, written, real))
        n += 1
    return problems, n


def test_core_api_signatures_are_the_codes() -> None:
    text = (DOCS / "core-api.md").read_text()
    problems, n = signature_problems(text)
    assert n > 120, n  # the spans it finds (134): the page is still read
    assert not problems, "\n".join(problems)
    missing = [e for e in EXAMPLES if f"`{e}`" not in " ".join(text.split())]
    assert not missing, f"EXAMPLES no longer in core-api.md: {missing}"


FIT = ("aetk.fit(model, train, val=None, *, epochs, batch_size, lr=1e-3, device=\"auto\", "
       "seed=0, checkpoint=None, resume=True, progress=True, callbacks=(), lr_schedule=None, "
       "batch_sampler=None, clip_grad_norm=None, penalties=())")


@pytest.mark.parametrize(("line", "problem"), [
    (FIT.replace("lr=1e-3", "lr=1e-2"), "lr's default is 0.001 in the code, 0.01 here"),
    (FIT.replace("*, ", ""), "epochs is keyword-only in the code, positional or keyword here"),
    (FIT.replace(", penalties=()", ""), "the code has more parameters: penalties"),
    (FIT.replace("seed=0, ", "seed=0, retries=3, "),
     "parameters (model, train, val, epochs, batch_size, lr, device, seed, retries, "),
    ("aetk.log_marginal(model, x, chunk=8192, n_samples=100, target=None)",
     "parameters (model, x, chunk, n_samples, target) where the code has (model, x, "
     "n_samples, chunk, target)"),
    ("aetk.latent_grid(model, codes, *, n_steps=12, total_count=None, ...)",
     "parameters (model, codes, n_steps, total_count) where"),
    ("log_map(metric, z_start, z_end, ..., tolerance=1e-6, ...)",
     "no parameter 'tolerance' after (metric, z_start, z_end)"),
    ("aetk.CodeMixture(samples)", "leading parameters are (codes, n_components, seed)"),
    ("aetk.distributions.mean(p, like_x=x)", "takes no keyword 'like_x'"),
    ("aetk.distributions.mean(p, like=x, total_count=1)",
     "total_count=1, but the code's default is None"),
])
def test_a_drifted_signature_in_core_api_is_found(line, problem) -> None:
    """A line of core-api.md with one signature broken (a default, the keyword-only
    marker, a parameter left out or added, two swapped, a name, a keyword, an example's
    default) gives one problem, saying what differs."""
    problems, n = signature_problems(f"## Geometry (`aetk.geometry`)\n- `{line}`\n")
    assert n == 1 and len(problems) == 1 and problem in problems[0], problems
