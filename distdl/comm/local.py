"""A world of one process: every collective is the identity, with the same argument checks."""

import json

from distdl.backend import xp_of
from distdl.comm.base import Communicator, check_array, check_op, check_root


class CompletedRequest:
    """The handle of a collective that finished before it was returned."""

    def wait(self):
        return None

    def done(self):
        return True


class LocalCommunicator(Communicator):
    backend = "local"

    def allreduce(self, array, op="sum"):
        check_array(array, "allreduce")
        check_op(op, "allreduce")
        return array

    def iallreduce(self, array, op="sum"):
        self.allreduce(array, op)
        return CompletedRequest()

    def broadcast(self, array, root=0):
        check_array(array, "broadcast")
        check_root(root, self.size, "broadcast")
        return array

    def allgather(self, array):
        check_array(array, "allgather")
        return xp_of(array).expand_dims(array, 0).copy()

    def gather(self, array, root=0):
        check_root(root, self.size, "gather")
        return self.allgather(array)

    def reduce_scatter(self, array, op="sum"):
        check_array(array, "reduce_scatter")
        check_op(op, "reduce_scatter")
        return array.copy()

    def barrier(self):
        pass

    def broadcast_json(self, value, root=0):
        check_root(root, self.size, "broadcast_json")
        return json.loads(json.dumps(value))

    def allgather_json(self, value):
        return [json.loads(json.dumps(value))]
