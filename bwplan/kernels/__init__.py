"""Compiled kernels that execute the ops of bwplan/ops, one subpackage per target.

Each op's `OpDef.kernels` names its kernels per target and component ("fwd", "dx:<port>",
"dw:<slot>"); a target's `get(name)` turns a name into a callable. Nothing here is imported
by the planner: only a runtime that executes a program loads a target, and with it the
target's compiler (Numba for cpu).
"""
