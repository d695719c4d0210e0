"""The code location of the sensor crash test: the real retraining sensors over a stand-in job.

The component under test is the sensors and the Dagster daemon that ticks them, not training:
`retraining_job` here has the real job's name and accepts the run config the sensors build (its
`fraud_model` op takes the model window), but it only logs that window, so a launched run costs
one process start instead of a model fit. The sensors are the objects of
`orchestration.retraining`, evaluated through their own functions; only their minimum interval is
shortened (see `ticking_every_loop`). Resources are the real ones, bound here: the lake's root
comes from the test through `dg.EnvVar`, as a deployment would pass it.
"""

import dagster as dg

from orchestration.jobs import RETRAINING_JOB
from orchestration.resources import LakeResource
from orchestration.retraining import RETRAINING_SENSORS
from settings import MonitoringSettings

LAKE_ROOT_ENV = "FRAUDPIPE_CRASH_TEST_LAKE"
"""Where the test's lake lives: the test sets it for the code server it starts."""
DRIFT_COOLDOWN_DAYS = 0
"""No cooldown: every drifted day is a trigger of its own, and when a tick is evaluated twice (the
daemon killed between saving the tick and saving the cursor) only the run key stands between the
repeated request and a second run, since no cooldown skips it first."""
SENSOR_INTERVAL_S = 1
"""Below the daemon's own loop period (5 s, not configurable), so every loop ticks every sensor."""


class RetrainWindow(dg.Config):
    """The model window `retrain_run_config` sends to the real `fraud_model` (`ModelConfig`'s
    window fields): strict config, so a sensor sending another shape fails the run's creation."""

    train_start: str
    train_days: int
    delay_days: int
    test_days: int


@dg.op(name="fraud_model")
def fraud_model(context: dg.OpExecutionContext, config: RetrainWindow) -> None:
    """Stands in for the model fit: logs the window it was asked to train on."""
    context.log.info(f"retraining window {config.model_dump()}")


@dg.job(name=RETRAINING_JOB, executor_def=dg.in_process_executor)
def retraining_job() -> None:
    """Same name as the real retraining job, one cheap op, run in the run worker's own process."""
    fraud_model()


def ticking_every_loop(sensor: dg.SensorDefinition) -> dg.SensorDefinition:
    """A copy of `sensor` with a 1 s minimum interval instead of 60 s: 20 ticks in minutes.

    `SensorDefinition.with_attributes` copies only jobs and metadata, so the copy is built from
    the sensor's own evaluation function (`_raw_fn`, what `with_attributes` itself passes on):
    name, target, status and the code evaluated are the original's.
    """
    return dg.SensorDefinition(
        name=sensor.name,
        evaluation_fn=sensor._raw_fn,
        job_name=sensor.job_name,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        description=sensor.description,
        default_status=sensor.default_status,
    )


defs = dg.Definitions(
    jobs=[retraining_job],
    sensors=[ticking_every_loop(sensor) for sensor in RETRAINING_SENSORS],
    resources={
        "lake": LakeResource(root=dg.EnvVar(LAKE_ROOT_ENV)),
        "monitoring": MonitoringSettings(cooldown_days=DRIFT_COOLDOWN_DAYS),
    },
)
