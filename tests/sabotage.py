"""A deliberately wrong pass, for tests that the numeric check catches and locates bad rewrites."""
from __future__ import annotations

import numpy as np

from refold.ir.graph import Node
from refold.passes import Pass, PassResult


class Sabotage(Pass):
    """Doubles the output of the first node ``pick`` accepts, behind its readers' backs."""

    name = "broken"

    def __init__(self, pick):
        self.pick = pick

    def call(self, model):
        g = model.graph
        victim = next(n for n in g if self.pick(n))
        two = g.add_const(np.array(2.0, np.float32))
        mul = Node("Mul", [victim.output, two], name="sabotage")
        g.insert_after(victim, mul)
        for node, i in victim.output.uses():
            if node is not mul:
                node.set_input(i, mul.output)
        return PassResult(model, True, {"rewrites": 1})
