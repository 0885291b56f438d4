"""TEST STAND-IN for ray.exceptions (gpufleet simulator): the names the stand-ins print."""


class RayError(Exception):
    pass


class RayActorError(RayError):
    """An actor (a vLLM RayWorkerWrapper) died: its process or its node is gone."""


class NodeDiedError(RayError):
    pass
