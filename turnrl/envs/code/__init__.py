"""Code environments: the agent writes Python that runs in a :mod:`turnrl.sandbox`.

``turnrl/CodeInterpreter-v0`` (:class:`~turnrl.envs.code.interpreter.CodeInterpreterEnv`)
    reasoning-gym tasks solved with an optional Python tool, R1-Code-Interpreter style.
``turnrl/CodeRepair-v0`` (:class:`~turnrl.envs.code.repair.CodeRepairEnv`)
    HumanEval problems: write the function, read the failing tests, repair.

Code output comes back as a **tool** observation (``info["obs_role"] == "tool"``), so its
tokens are masked out of the policy loss.
"""
