"""The backward pass: an iterative walk of the graph in reverse topological order."""

import threading
import time

from distdl.backend import xp_of


def _toposort(root):
    """Nodes reachable from ``root`` through inputs that need a gradient, each before their producers,
    and the leaves' entries: how many gradient contributions each will receive in this pass.

    Iterative depth-first search, so a chain of any length works (no recursion limit). An input
    that needs no gradient is not followed: its producer gets no gradient from this pass.
    """
    order, seen, leaves = [], {root}, {}
    stack = [(root, _needed_inputs(root))]
    while stack:
        node, pending = stack[-1]
        for index, tensor in pending:
            parent = tensor._ctx
            if parent is None:  # a leaf: one more contribution due
                entry = leaves.get(id(tensor))
                if entry is None:  # tensor, contributions due, their sum, sum owned, the (first) node and input
                    leaves[id(tensor)] = [tensor, 1, None, False, node, index]
                else:
                    entry[1] += 1
            elif parent not in seen:
                if parent.inputs is None:
                    raise RuntimeError(
                        "backward through a graph whose buffers were already freed: "
                        "pass retain_graph=True to the first backward() to run it twice"
                    )
                seen.add(parent)
                stack.append((parent, _needed_inputs(parent)))
                break
        else:
            stack.pop()
            order.append(node)
    order.reverse()
    return order, leaves


def _needed_inputs(node):
    """An iterator over (index, input) of the inputs of ``node`` that need a gradient (resumed where the search
    left it)."""
    return iter([(i, t) for i, (t, needed) in enumerate(zip(node.inputs, node.needs_input_grad)) if needed])


def _targets(leaves):
    """Tell each node whose backward gives a leaf its whole gradient where that leaf wants it written.

    A leaf's ``_grad_into`` (DistributedDataParallel's, for its parameters) returns (array, scale) or
    None: the array is the leaf's place in its gradient bucket, ``scale`` (None: 1) what to multiply the
    gradient by on the way (1/world size). Only a leaf without a gradient yet, that one node of this pass
    feeds, is offered one: the node's backward may then write ``scale`` x its gradient there
    (``Function.grad_into``), and the leaf adopts the array, with no copy. Returns the nodes offered a place.
    """
    offered = []
    for tensor, due, _, _, node, index in leaves.values():
        if tensor._grad_into is not None and due == 1 and tensor.grad is None:
            target = tensor._grad_into(tensor)
            if target is not None:
                if node.grad_into is None:
                    node.grad_into = {}
                    offered.append(node)
                node.grad_into[index] = target
    return offered


def _owned(grad, node_outputs, node_grads):
    """Whether ``grad`` is a fresh array nobody else holds, so a leaf may keep it without a copy.

    Views, pass-through of a gradient the node received, and one array returned for two
    inputs are shared; Function.backward promises to return arrays it does not keep.
    """
    if grad.base is not None:
        return False
    for output in node_outputs:  # loops, not generators: this runs once per leaf and step
        if grad is output:
            return False
    count = 0
    for other in node_grads:
        if other is grad:
            count += 1
    return count == 1


def _written_into(grad, into):
    for array, _ in into.values():
        if grad is array:
            return True
    return False


def _accumulate_leaf(tensor, grad, owned):
    """Add ``grad`` into ``tensor.grad`` in place (it may be a view into a bucket), then fire hooks, and last
    the ``_grad_final`` callbacks (DistributedDataParallel's: they take what the hooks left into its bucket)."""
    if grad.dtype != tensor.data.dtype:
        grad, owned = grad.astype(tensor.data.dtype), True
    if tensor.grad is None:
        tensor.grad = grad if owned else xp_of(grad).array(grad, copy=True)
    else:
        tensor.grad += grad
    if tensor._hooks:
        for hook in list(tensor._hooks.values()):
            hook(tensor)
    if tensor._grad_final:
        for final in tensor._grad_final:
            final(tensor)


def _shape_error(node, tensor, grad):
    return RuntimeError(
        f"{type(node).__name__}.backward returned a gradient of shape {grad.shape} "
        f"for an input of shape {tensor.shape}"
    )


class _Pass(threading.local):
    queue = None  # the callbacks queued during the backward pass this thread runs (None outside one)
    started = None  # when it began (time.time())


_pass = _Pass()


def queue_callback(callback):
    """Call ``callback()`` once, when the backward pass now running has accumulated every leaf gradient.

    As torch's ``queue_callback``: a leaf's post-accumulate-grad hook queues it, so it runs at
    the end of the passes that reach that leaf and of no other. DistributedDataParallel finishes
    its gradient averaging there: it launches the buckets whose parameters got no gradient and
    waits for all of them. Its callback is queued after the hooks of the first parameter whose
    gradient is final, so one queued by such a hook runs first (as in torch) and sees gradients
    not yet averaged (it must not change them): read the averaged ones after ``backward()``.
    """
    queue = _pass.queue
    if queue is None:
        raise RuntimeError("queue_callback() outside a backward pass: call it from a hook that backward runs")
    queue.append(callback)


def pass_started():
    """When the backward pass now running began (time.time()), for its queued callbacks; None outside one.

    The step recorder's start of backward (``timing``): it costs the pass one clock read, not a node in the graph.
    """
    return _pass.started


def backward(root, grad, retain_graph=False):
    """Accumulate d(root)/d(leaf) * grad into every leaf's ``.grad`` that requires it, then run queued callbacks."""
    outer = _pass.queue, _pass.started
    _pass.queue, _pass.started = [], time.time()
    try:
        _walk(root, grad, retain_graph)
        queue = _pass.queue
        for callback in queue:  # in order; one may queue another, which runs after it
            callback()
    finally:
        _pass.queue, _pass.started = outer


def _walk(root, grad, retain_graph):
    node = root._ctx
    if node is None:
        _accumulate_leaf(root, grad, owned=False)
        return
    if node.inputs is None:
        raise RuntimeError(
            "backward through a graph whose buffers were already freed: "
            "pass retain_graph=True to the first backward() to run it twice"
        )
    order, leaves = _toposort(node)
    offered = _targets(leaves)
    try:
        _run(node, order, leaves, root, grad, retain_graph)
    finally:  # the offers are this pass's: a retained graph's next pass, or one after an error, offers anew
        for node in offered:
            node.grad_into = None


def _run(first, order, leaves, root, grad, retain_graph):
    """The walk itself: each node's backward, its gradients passed on or accumulated into the leaves."""
    grads = {first: {root._idx: grad}}
    for node in order:
        received = grads.pop(node)
        meta = node.output_meta
        if meta is not None and len(meta) > 1:
            outputs = []
            for i, (shape, dtype) in enumerate(meta):
                g = received.get(i)
                outputs.append(g if g is not None else xp_of(grad).zeros(shape, dtype))
            input_grads = node.backward(*outputs)
        else:
            outputs = (received[0],)
            input_grads = node.backward(outputs[0])
        into = node.grad_into  # the places this pass offered (_targets)
        if type(input_grads) is not tuple:
            input_grads = (input_grads,)
        for tensor, g, needed in zip(node.inputs, input_grads, node.needs_input_grad):
            if not needed:
                continue
            if g.shape != tensor.shape:
                raise _shape_error(node, tensor, g)
            parent = tensor._ctx
            if parent is not None:
                slot = grads.get(parent)
                if slot is None:
                    grads[parent] = {tensor._idx: g}
                else:
                    previous = slot.get(tensor._idx)
                    slot[tensor._idx] = g if previous is None else previous + g
                continue
            entry = leaves[id(tensor)]
            if entry[2] is None:
                # written where the leaf asked: that array is the leaf's own
                entry[2], entry[3] = g, (into is not None and _written_into(g, into)) or _owned(g, outputs, input_grads)
            else:
                entry[2], entry[3] = entry[2] + g, True
            entry[1] -= 1
            if entry[1] == 0:  # the leaf's gradient for this pass is final
                _accumulate_leaf(tensor, entry[2], entry[3])
                del leaves[id(tensor)]
        if not retain_graph:
            node.release()
