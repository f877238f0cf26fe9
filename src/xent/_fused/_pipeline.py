"""numba's compiler for the kernels: each kernel's untyped IR built once, for all its signatures.

numba compiles a kernel from its bytecode again for each new signature. The
untyped stage of that work (bytecode to IR, and inlining the ``inline="always"``
helpers: `xent._fused._options.INLINE`) was half of each compile: 2.4-2.8 of
5.2-5.4 s for `_rows.sparse_grad_rows` (``haswell``), and every kernel is
compiled for four or more dtypes. It does not read the arrays' dtypes, only:

- the argument types that branch pruning resolves (None, omitted, literal),
- an array's ``ndim`` (rewritten as a constant), a tuple's length.

So `KernelCompiler` keeps a copy of the IR at the end of the untyped stage, with
the compile flags as the stage left them (numba's inliner clears
``enable_ssa``), keyed by the function, the flags it started with and those
parts of the argument types (`_untyped_key`: an array stands for its ``ndim``
alone, any other type for itself). A later signature with the same key starts
from a fresh copy and those flags, and runs only what follows: numba's literal
propagation (which types the IR partially), then its typed and lowering passes
as ever. Nothing is kept from, or started from, a compile whose untyped stage
reads more: one with ``locals=`` types (SSA renames copy them), a
``literal_unroll`` (typed as it unrolls), or a part lifted out to object mode.
A kernel's globals are read once, at its first compile (numba reads them again
for each signature; a kernel's are constants). Its helpers are inlined by
`xent._fused._inliner`, which builds each helper's IR once for all kernels.

Where numba's untyped pipeline has no literal propagation pass to keep the IR
before (another numba version), every signature compiles from its bytecode.
"""
from numba import literal_unroll
from numba.core import ir, ir_utils, postproc, types, untyped_passes
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.compiler_machinery import FunctionPass, PassManager, register_pass

from xent._fused import _inliner

__all__ = ["KernelCompiler"]

# The pass the IR is kept before (None in a numba without it: nothing is kept).
_LITERAL_PROPAGATION = getattr(untyped_passes, "LiteralPropagationSubPipelinePass", None)

# (function, flags, argument key) -> (the function's IR at the end of the untyped stage,
# the flags as the stage left them). A handful of kernels, each with one or two
# keys: not bounded further.
_UNTYPED = {}


def _untyped_key(state):
    """What the untyped stage of compiling ``state.func_id.func`` for ``state.args`` reads,
    as a key; taken before the compile starts (numba's inliner clears
    ``state.flags.enable_ssa`` in place while it works)."""
    args = tuple(("array", t.ndim) if isinstance(t, types.Array) else t for t in state.args)
    return state.func_id.func, state.flags.copy(), args


def _copy(func_ir, func_id):
    """`_inliner.copy_ir` of `func_ir`, named for `func_id`, with its analyses reset and
    its definitions rebuilt from its blocks. What is kept."""
    copied = _inliner.copy_ir(func_ir, func_id)
    copied._reset_analysis_variables()
    copied._definitions = ir_utils.build_definitions(copied.blocks)
    return copied


def _fresh_copy(func_ir, func_id):
    """`_copy` with the analyses numba's post-processing keeps recomputed, as the
    untyped stage's last passes leave them: what a compile starts from."""
    fresh = _copy(func_ir, func_id)
    postproc.PostProcessor(fresh).run(emit_dels=False)
    return fresh


def _keepable(state):
    """Whether the untyped stage read nothing of `state` beyond `_untyped_key`, as
    far as it shows only once the stage has run: no ``literal_unroll``, nothing
    lifted out to object mode."""
    unrolls = any(isinstance(stmt, ir.Assign) and isinstance(stmt.value, (ir.Global, ir.FreeVar))
                  and stmt.value.value is literal_unroll
                  for block in state.func_ir.blocks.values() for stmt in block.body)
    return not (state.lifted or unrolls)


@register_pass(mutates_CFG=False, analysis_only=True)
class _KeepUntyped(FunctionPass):
    """Keeps a fresh copy of the untyped IR, and the flags as the untyped stage
    left them, for the compiles of later signatures."""
    _name = "xent_keep_untyped"

    def __init__(self):   # (abstract in numba's CompilerPass)
        FunctionPass.__init__(self)

    def run_pass(self, state):
        if _keepable(state):
            _UNTYPED[state.xent_untyped_key] = (_copy(state.func_ir, state.func_ir.func_id),
                                                state.flags.copy())
        return False


@register_pass(mutates_CFG=True, analysis_only=False)
class _StartFromKept(FunctionPass):
    """Starts this compile from a fresh copy of the kept untyped IR, with the flags
    the untyped stage left (the state numba's passes up to there would leave)."""
    _name = "xent_start_from_kept"

    def __init__(self):   # (abstract in numba's CompilerPass)
        FunctionPass.__init__(self)

    def run_pass(self, state):
        kept_ir, kept_flags = _UNTYPED[state.xent_untyped_key]
        state.func_ir = _fresh_copy(kept_ir, state.func_id)
        state.nargs = state.func_ir.arg_count
        _inliner.restore_flags(state.flags, kept_flags)
        return True


def _untyped_passes(state):
    """numba's untyped passes for `state`: all, with `_KeepUntyped` before literal
    propagation; or, where an IR is kept for its key, `_StartFromKept` and those
    after that point. The helpers are inlined by `xent._fused._inliner` where it
    mirrors the installed numba's inliner. numba's own passes, as they are, for
    a compile with ``locals=`` types (numba's SSA renames copy them, into the
    dispatcher's own dict, and its inliner hands them to each helper's build);
    all of them where there is no literal propagation pass."""
    pipeline = DefaultPassBuilder.define_untyped_pipeline(state)
    if state.locals:
        return pipeline.passes
    default = (_inliner.with_helper_inlining(pipeline) if _inliner.MIRRORS_NUMBA
               else pipeline).passes
    at = next((i for i, (cls, _) in enumerate(default)
               if cls is _LITERAL_PROPAGATION), None)
    if at is None:
        return default
    if state.xent_untyped_key in _UNTYPED:
        return [(_StartFromKept, "start from the kept untyped IR")] + default[at:]
    return default[:at] + [(_KeepUntyped, "keep the untyped IR")] + default[at:]


class KernelCompiler(CompilerBase):
    """numba's nopython pipeline, with the untyped stage run once per kernel and key."""

    def define_pipelines(self):
        state = self.state
        state.xent_untyped_key = _untyped_key(state)
        pm = PassManager("xent_nopython")
        pm.passes.extend(_untyped_passes(state))
        pm.passes.extend(DefaultPassBuilder.define_typed_pipeline(state).passes)
        pm.passes.extend(DefaultPassBuilder.define_nopython_lowering_pipeline(state).passes)
        pm.finalize()
        return [pm]
