"""Arrays a kernel borrows from its caller: views of them count no references.

numba gives every array a reference-counted owner (its meminfo), and every
view taken of it inside a kernel (a row ``x[i]``, the next row to prefetch)
adds and drops a reference: an atomic add on the owner's count, through a
call. The row kernels take several views per row; on rows of 100 float32
logits on AMD Zen 4 those atomics took about 15% of a loss's time, and two
threads working on the same array contend for the count's cache line.

The caller of a kernel holds its arrays for the whole call, so the kernel
needs no references of its own: `borrowed(a)` is `a` with no owner (and no
Python parent). Views of it carry no owner either, and numba's reference
calls return at once on one. Nothing borrowed may outlive the call (be
returned or stored), which the kernels never do.

An array the kernel allocates itself (its per-chunk statistics, a scratch
row) is freed by numba right after the variable's last use, which would be
the `borrowed` call. Its owner must stay in use until the borrowed alias is
done with: `keep_alive(owner)` after the loop, as in

    stats = chunk_stats(x)
    st = borrowed(stats)
    for i in range(lo, hi):
        ...st...
    keep_alive(stats)

(`tests/test_borrow.py` shows the hazard and the rule at work, and checks
from the kernels' IR that they count references to their unborrowed
arguments only.)
"""
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["borrowed", "keep_alive"]


@intrinsic
def borrowed(typingctx, a):
    """`a` (an array) with no owner: views of it count no references; None stays None."""
    if isinstance(a, types.NoneType):
        return a(a), lambda context, builder, sig, args: context.get_dummy_value()
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(a)(context, builder, value=args[0])
        array.meminfo = cgutils.get_null_value(array.meminfo.type)
        array.parent = cgutils.get_null_value(array.parent.type)
        return array._getvalue()
    return a(a), codegen


@intrinsic
def keep_alive(typingctx, a):
    """Nothing, but a use of `a`: numba frees an array after its variable's last use."""
    return types.none(a), lambda context, builder, sig, args: context.get_dummy_value()
