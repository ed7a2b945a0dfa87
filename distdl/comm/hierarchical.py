"""Hierarchical allreduce for several nodes of several ranks each: within the node, across nodes, within the node.

A flat ring over N nodes of L ranks sends 2(NL-1)/NL of the array over each node's
link (the ring crosses it once each way) in 2(NL-1) steps. Here the ranks of a node
first reduce-scatter the array among themselves (over ipc://, inside the host), so
that local rank i holds part i summed over its node; local rank i of every node then
allreduces that part in a ring of N across the nodes (each local rank leads for its
1/L of the array, so the node's ranks share the work and its link carries 2(N-1)/N
of the array); last, the ranks of a node allgather the parts. That is the reduce,
the ring across nodes and the broadcast, each in its bandwidth-optimal form.

Every element is reduced in one fixed order (its node's ranks in ring order, then
the nodes in ring order) and then copied, so every rank ends bit-identical.
Node identity is the host each rank registered at the rendezvous.
"""

from collections import namedtuple

import numpy as np

from distdl.comm.reduction import split_counts

MODES = ("auto", "on", "off")
Plan = namedtuple("Plan", "local across")  # this node's ranks (ring order), the ranks of this local index by node


def plan(hosts, rank, mode="auto"):
    """The groups of rank ``rank`` given every rank's host, or None where the flat ring is used.

    ``mode``: "off" never, "on" and "auto" where there are 2 or more nodes of the same
    number (2 or more) of ranks each: the shapes where it was measured faster (README).
    """
    if mode not in MODES:
        raise ValueError(f"DISTDL_ZMQ_HIERARCHICAL={mode!r}: give one of {', '.join(MODES)}")
    nodes = {}
    for peer, host in enumerate(hosts):
        nodes.setdefault(host, []).append(peer)
    members = list(nodes.values())
    per_node = {len(ranks) for ranks in members}
    if mode == "off" or len(members) < 2 or len(per_node) != 1 or per_node == {1}:
        return None
    local = nodes[hosts[rank]]
    index = local.index(rank)
    return Plan(local, [ranks[index] for ranks in members])


def describe(groups):
    """How a large allreduce runs under ``groups`` (a plan, or None), in words."""
    if groups is None:
        return "flat ring"
    return f"hierarchical: {len(groups.across)} nodes x {len(groups.local)} ranks"


def allreduce(comm, flat, ufunc, call, groups, segments=None):
    """Reduce ``flat`` in place over every rank: reduce-scatter in the node, ring across nodes, allgather in the node.

    ``comm`` is the ZeroMQ communicator: its ``_ring`` runs the steps of a ring among a group. With
    ``segments`` (the node's shared memory, ``shared_memory.Segments``) the in-node phases run there.
    """
    size = len(groups.local)
    starts = np.concatenate([[0], np.cumsum(split_counts(flat.size, size))])
    index = groups.local.index(comm.rank)
    if segments:
        segments.reduce_scatter(comm, flat, ufunc, call)
    else:
        comm._ring(flat, ufunc, call, groups.local, 0, size - 1)
    comm._ring(flat[starts[index]:starts[index + 1]], ufunc, call, groups.across, 0, 2 * (len(groups.across) - 1))
    if segments:
        segments.allgather(comm, flat, call)
    else:
        comm._ring(flat, ufunc, call, groups.local, size - 1, 2 * (size - 1))
