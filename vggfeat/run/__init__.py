"""The run wing: what turns inputs into rows. Options (`options`), the engine protocol and the local
engine (`engine`), the Ray engine (`ray`), units of input (`units`), the checks before anything is
built (`checks`) and the job (`job`: `extract`). It writes only through the sinks of `vggfeat.io`.
See docs/architecture.md.
"""

#: where features are computed (`--engine`): this process, or a Ray cluster; cheap to import
ENGINES = ("local", "ray")
