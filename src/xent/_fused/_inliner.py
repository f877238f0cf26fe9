"""numba's inlining of the kernels' ``inline="always"`` helpers, each helper's IR built once.

numba inlines a helper (its untyped pass ``InlineInlinables``) by compiling the
helper's bytecode to IR again at every call site, the helper's own helpers
inlined the same way, nested 5-6 deep in the kernels; then it copies that IR
twice, one block at a time, and each block's copy copies the helper's whole
variable scope: (blocks × variables) per copy, one of the two copies unused.
That was 3.5-5.8 s of the 6-10 s each kernel's first signature took to compile
(``haswell``, session 25); with what follows it takes 0.07-0.6 s of 1.9-3.9 s
(the eight chunk kernels, for ``haswell``, ``x86-64`` and the host: session 26).

`HelperInlining` is numba's pass with `_HelperInliner` as its worker, at every
depth. A helper's untyped IR is built once per process: numba builds it for
arguments of unknown type, so it depends only on the helper, the compile flags
and the typing and target contexts, and on the helper's globals, which are
read once for the whole process (numba reads them at each build; the
kernels' helpers read only constants and other helpers). A closure is built
at each call site, as numba does (its cells may change; no kernel helper is
one); a helper with a block for object mode numba cannot inline. Each call
site inlines one copy of it, made in one pass over all its blocks, by
numba's steps in numba's order (`_HelperInliner.inline_function`), so the
kernel's IR is the one numba builds but for block labels and the unique ids
in variable names, which move with numba's counters (tests/test_inliner.py
compares the machine code).

Those steps are numba's ``InlineWorker.inline_ir`` as it is in numba 0.59 to
0.68 and on numba's main branch (2026-06). Where the installed numba's
inliner reads otherwise (or is wrapped), or lacks a function used here,
`MIRRORS_NUMBA` is False and the kernels use numba's own pass.
"""
import copy
import hashlib
import inspect
import textwrap

from numba.core import bytecode, inline_closurecall, ir, ir_utils
from numba.core.compiler import DefaultPassBuilder
from numba.core.compiler_machinery import register_pass
from numba.core.untyped_passes import InlineInlinables

__all__ = ["HelperInlining", "MIRRORS_NUMBA", "copy_ir", "restore_flags", "with_helper_inlining"]

# numba's functions the inlining below is built from (numba's own inliner calls them).
_NUMBA_HELPERS = {
    inline_closurecall: ("_created_inlined_var_name", "_get_callee_args", "_replace_args_with",
                         "_replace_returns", "_add_definitions", "_get_all_scopes"),
    ir_utils: ("_the_max_label", "add_offset_to_labels", "simplify_CFG", "replace_vars",
               "next_label", "find_topo_order"),
    bytecode.FunctionIdentity: ("derive",),
}
# SHA-1 of the source (dedented) of numba's methods mirrored or wrapped here, as numba
# 0.62.0, 0.64.0, 0.66.0, 0.67.0, 0.68.1 and its main branch of 2026-06 have them: with
# any other source, the kernels inline by numba's own pass.
_MIRRORED = {
    "InlineWorker.inline_ir": "b8c4a702c8",
    "InlineWorker.inline_function": "281f346af6",
    "InlineWorker.run_untyped_passes": "a1f7ed662f",
    "InlineInlinables._do_work": "1b71082b04",
}

# (helper, the flags it is built with, typing context, target context's type) ->
# (the helper's untyped IR, the flags as building it left them). The kernels'
# helpers, about 25: not bounded further.
_HELPER_IR = {}


def _source_hash(method):
    """The first 10 hex digits of the SHA-1 of `method`'s dedented source (None for a
    wrapped method, whose source `inspect` reads from the function it wraps)."""
    if hasattr(method, "__wrapped__"):
        return None
    source = textwrap.dedent(inspect.getsource(method))
    return hashlib.sha1(source.encode()).hexdigest()[:10]


def _mirrors_numba():
    """Whether the installed numba's inliner is the one mirrored here, and has the
    functions used here."""
    owners = {"InlineWorker": inline_closurecall.InlineWorker,
              "InlineInlinables": InlineInlinables}
    try:
        hashes = {name: _source_hash(getattr(owners[name.split(".")[0]], name.split(".")[1]))
                  for name in _MIRRORED}
    except (AttributeError, OSError, TypeError):   # (no source shipped, a method gone)
        return False
    helpers = all(hasattr(owner, name) for owner, names in _NUMBA_HELPERS.items()
                  for name in names)
    return helpers and hashes == _MIRRORED


MIRRORS_NUMBA = _mirrors_numba()


def restore_flags(flags, kept):
    """Set each of `flags`' values that differ from `kept`'s (copied flags) to `kept`'s:
    the state numba's passes would have left them in (its inliner clears
    ``enable_ssa`` in place; options such as ``inline`` take no value back)."""
    for name, value in kept.values().items():
        if getattr(flags, name) != value:
            setattr(flags, name, value)


def copy_ir(func_ir, func_id):
    """A copy of `func_ir`, named for `func_id`, whose blocks share nothing mutable
    with it: all blocks copied in one pass (one memo), so the scope and each
    variable are copied once (numba copies them block by block, the scope
    with each)."""
    copied = func_ir.copy()
    copied.blocks = copy.deepcopy(func_ir.blocks)
    copied.func_id = func_id
    return copied


def _relabel(blocks, caller_ir):
    """`blocks` (a copied callee's) with labels above every label of `caller_ir` and any
    label numba has handed out, the CFG simplified; numba's label counter moved past them."""
    start = max(ir_utils._the_max_label.next(), max(caller_ir.blocks.keys())) + 1
    blocks = ir_utils.simplify_CFG(ir_utils.add_offset_to_labels(blocks, start))
    ir_utils._the_max_label.update(max(blocks.keys()))
    return blocks


def _rename_locals(blocks, callee_ir, caller_scope, freevars):
    """Give each local variable of the callee (but its free variables) a new name in
    `caller_scope`, ``<callee's unique name>_<name>``; returns {old name: new variable}."""
    scopes = inline_closurecall._get_all_scopes(blocks)
    assert len(scopes) == 1, "an inlined helper has one scope"
    renamed = {}
    for var in tuple(scopes[0].localvars._con.values()):
        if var.name not in freevars:
            name = inline_closurecall._created_inlined_var_name(callee_ir.func_id.unique_name,
                                                                var.name)
            renamed[var.name] = caller_scope.redefine(name, loc=var.loc)
    ir_utils.replace_vars(blocks, renamed)
    return renamed


def _splice(caller_ir, block, i, blocks):
    """Put callee `blocks` in place of the call at ``block.body[i]``: `block` ends in a
    jump to them, each return assigns the call's target and jumps to a new block
    holding the statements after the call. Returns the new (label, block) pairs."""
    call = block.body[i]
    scope = block.scope
    after = ir.Block(scope, block.loc)
    after.body = block.body[i + 1:]
    after_label = ir_utils.next_label()
    caller_ir.blocks[after_label] = after
    block.body = block.body[:i] + [ir.Jump(min(blocks.keys()), call.loc)]
    order = ir_utils.find_topo_order(blocks)
    inline_closurecall._replace_returns(blocks, call.target, after_label)
    definitions = caller_ir._definitions
    if call.target.name in definitions and call.value in definitions[call.target.name]:
        definitions[call.target.name].remove(call.value)
    new_blocks = [(after_label, after)]
    for label in order:
        blocks[label].scope = scope
        inline_closurecall._add_definitions(caller_ir, blocks[label])
        caller_ir.blocks[label] = blocks[label]
        new_blocks.append((label, blocks[label]))
    return new_blocks


def with_helper_inlining(pipeline):
    """`pipeline` (a numba `PassManager`; its caller finalizes it again) with
    `HelperInlining` in place of numba's ``InlineInlinables``."""
    pipeline.passes = [(HelperInlining if cls is InlineInlinables else cls, text)
                       for cls, text in pipeline.passes]
    return pipeline


def _untyped_pipeline(state):
    """numba's untyped pipeline for a helper, inlining its helpers by `HelperInlining`."""
    return with_helper_inlining(DefaultPassBuilder.define_untyped_pipeline(state))


class _HelperInliner(inline_closurecall.InlineWorker):
    """numba's `InlineWorker` for the untyped inlining pass, with each helper's IR
    built once (`run_untyped_passes`) and copied once per call site (`inline_function`)."""

    @classmethod
    def like(cls, worker):
        """A `_HelperInliner` set up as numba's `worker` is."""
        inliner = cls(worker.typingctx, worker.targetctx, worker.locals, worker.pipeline,
                      worker.flags, validator=worker.validator)
        inliner._compiler_pipeline = _untyped_pipeline
        return inliner

    def run_untyped_passes(self, func, enable_ssa=False):
        """`func`'s untyped IR, as numba's worker builds it (its helpers inlined by
        `HelperInlining`), built once: the kept IR itself (callers copy it), and
        ``self.flags`` left as building it leaves them. numba builds it with
        ``self.flags``, ``enable_ssa`` set in place to `enable_ssa`: those flags
        are the key, with the contexts' kinds (each compile has a copy of the
        target context with its own error model and fast-math flags, which the
        untyped IR does not read)."""
        flags = self.flags.copy()
        flags.enable_ssa = enable_ssa
        key = (func, flags, self.typingctx, type(self.targetctx))
        if key not in _HELPER_IR:
            func_ir = super().run_untyped_passes(func, enable_ssa)
            if func.__code__.co_freevars:   # a closure: its cells may change
                return func_ir
            _HELPER_IR[key] = func_ir, self.flags.copy()
        func_ir, flags_after = _HELPER_IR[key]
        restore_flags(self.flags, flags_after)
        return func_ir

    def inline_function(self, caller_ir, block, i, function, arg_typs=None):
        """Inline `function` at ``block.body[i]`` of `caller_ir` (numba's
        ``inline_ir``, untyped, with one copy of the callee's IR made in one pass).
        Returns numba's tuple, its first item (an unused copy of the callee) None.
        (Only the untyped pass uses this worker: `arg_typs` is always None.)"""
        kept = self.run_untyped_passes(function)
        # (a new unique name, as each of numba's builds has: the inlined variables
        # are named after it)
        callee_ir = copy_ir(kept, kept.func_id.derive())
        if self.validator is not None:
            self.validator(callee_ir)
        blocks = _relabel(callee_ir.blocks, caller_ir)
        callee_ir.blocks = blocks
        renamed = _rename_locals(blocks, callee_ir, block.scope, function.__code__.co_freevars)
        call = block.body[i]
        args = inline_closurecall._get_callee_args(call.value, callee_ir.func_id.func, call.loc,
                                                  caller_ir)
        inline_closurecall._replace_args_with(blocks, args)
        return None, blocks, renamed, _splice(caller_ir, block, i, blocks)


@register_pass(mutates_CFG=True, analysis_only=False)
class HelperInlining(InlineInlinables):
    """numba's ``InlineInlinables``, inlining through a `_HelperInliner`."""
    _name = "xent_inline_helpers"

    def __init__(self):   # (abstract in numba's CompilerPass)
        InlineInlinables.__init__(self)

    def _do_work(self, state, work_list, block, i, expr, inline_worker):
        return super()._do_work(state, work_list, block, i, expr,
                                _HelperInliner.like(inline_worker))
