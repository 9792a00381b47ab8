"""bwplan: plans, explains and runs the minimal backward pass of a neural network.

    net = bwplan.load("net.bw")                 # or a Caffe .prototxt
    plan = bwplan.make_plan(net)                # every dX / dW decision, with reasons
    print(bwplan.render_table(plan))
"""
from bwplan.api import CompiledNet, compile
from bwplan.explain.table import render_table
from bwplan.frontend.load import load, load_bw_text
from bwplan.plan.plan import make_plan
from bwplan.plan.policy import apply_policy

__all__ = ["compile", "CompiledNet", "load", "load_bw_text", "make_plan", "apply_policy",
           "render_table"]
__version__ = "0.1.0"
