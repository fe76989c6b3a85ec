"""TF Serving's `--model_config_file` (a text-format `ModelServerConfig`), read into ModelConfigs, checked up front.

Every TF Serving config reads unchanged: the schema below is built at first use from the installed
`tensorflow_serving.config.model_server_config_pb2` (its ModelConfig fields, names and numbers copied as they are),
and parsed by protobuf's own `text_format`, so unknown fields and bad values are refused with their line and column.
Nothing in the text is expanded: `${VAR}` stays literal (as in TF Serving) and then fails the base_path check.

pyserving reads a documented superset, for the syntax of the tutorial article users copy from. In package
`pyserving.config` (field numbers 1000+ are pyserving's; the rest are TF Serving's):

    message ModelServerConfig { oneof config { ModelConfigList model_config_list = 1;
                                               google.protobuf.Any custom_model_config = 2; } }  // custom: refused
    message ModelConfigList { repeated ModelConfig config = 1; }
    message ModelConfig {
      // tensorflow.serving.ModelConfig, unchanged:
      string name = 1; string base_path = 2; ModelType model_type = 3; string model_platform = 4;
      ServableVersionPolicy model_version_policy = 7; map<string, int64> version_labels = 8;
      LoggingConfig logging_config = 6;
      // pyserving's additions:
      DefaultVersionPolicy default_version_policy = 1001;
      UnwrappedBatchingParameters batching_parameters = 1002;  // see pyserving.config.batching_config
    }
    message DefaultVersionPolicy {
      oneof policy_choice { ServableVersionPolicy.Latest latest = 100; ServableVersionPolicy.All all = 101;
                            ServableVersionPolicy.Specific specific = 102; }
      repeated Percentage percentage = 1;
    }
    message Percentage { oneof arm { string version = 1; string label = 2; } optional int32 value = 3; }
    // in DefaultVersionPolicy, for canary releases (pyserving only):
    //   string sticky_key = 2;  Shadow shadow = 3;  Rollback rollback = 4;  Promote promote = 5;
    message Shadow { oneof arm { string version = 1; string label = 2; } optional int32 percent = 3; }
    message Rollback { optional double max_error_rate_increase = 1; optional double max_p99_latency_ratio = 2;
                       optional double window_seconds = 3; optional int32 min_requests = 4; }
    message Promote { optional int32 step_percent = 1; optional double interval_seconds = 2; }

Meaning of the additions:
* `default_version_policy { latest {...} | all {} | specific {...} }` is the article's name for
  `model_version_policy`, with the same meaning; giving both is an error.
* `default_version_policy { percentage { version: "2" value: 70 } percentage { label: "canary" value: 30 } }` is a
  traffic split (TrafficSplit): requests that name no version or label go to an arm by weight. A version is an
  integer in a string (the article's spelling); a label must be one of the model's version_labels. Weights are
  integers 0..100 summing to 100; no arm twice; no latest/all/specific in the same default_version_policy.
  The split's versions must be served: without model_version_policy the version policy becomes
  `specific { versions: <the split's versions and its labels' versions> }`; with `specific`, those versions must be
  in it; `latest`/`all` are taken as given (checked at run time against the versions found).
* `batching_parameters { max_batch_size: 16 batch_timeout_micros: 10000 num_batch_threads: 4 }`: the model's
  BatchingOptions, in unwrapped scalars. TF Serving's wrapped `max_batch_size { value: 16 }` is also read when the
  whole file uses it (the same schema with TF Serving's BatchingParameters, package
  pyserving.config.wrapped_batching). Unset fields get TF Serving's defaults; checked as in batching_config.

Checks (TF Serving's wording where it has one): a non-empty name, listed once ("Illegal to list model X multiple
times in config list"); base_path absolute or a URI; model_platform "tensorflow" or another registered platform
(empty: "tensorflow", as is model_type: TENSORFLOW; both set: error); no custom_model_config; version labels
non-empty and >= 0; `specific` lists a version; `latest { num_versions: 0 }` means 1; logging_config's
sampling_rate within [0, 1]. An empty config, or one with no models, is valid and yields ().
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import NoReturn

from google.protobuf import any_pb2, descriptor_pb2, text_format
from google.protobuf.message import Message
from pyserving.codecs.tfserving.protos import (
    file_system_storage_path_source_pb2,
    logging_config_pb2,
    model_server_config_pb2,
)

from pyserving.config.batching_config import PACKAGE, batching_options_from_message, batching_schemas
from pyserving.config.textproto import (
    ConfigError,
    DynamicMessage,
    FieldPath,
    TextProto,
    add_optional_scalar,
    build_file,
    message_class,
    read_config_file,
)
from pyserving.options import (
    BatchingOptions,
    LoggingOptions,
    ModelConfig,
    Promotion,
    RollbackGuard,
    ShadowTraffic,
    TrafficSplit,
    VersionPolicy,
)
from pyserving.config.logging_options import check_logging_options
from pyserving.platforms import PLATFORMS

__all__ = ["ConfigError", "load_model_config_file", "model_config_to_text", "parse_model_server_config"]

_TFS = "pyserving.tfs"  # our TensorFlow-free copy of tensorflow.serving's config protos
_COPIED = ("ModelConfig", "ModelConfigList", "ModelServerConfig")
_POLICY = f".{_TFS}.FileSystemStoragePathSourceConfig.ServableVersionPolicy"
_WRAPPED_PACKAGE = f"{PACKAGE}.wrapped_batching"
_HINT = 'expected a text-format ModelServerConfig: model_config_list { config { name: "..." base_path: "/..." } }'


# ---------------------------------------------------------------------------------------------------------------
# Schema


def _superset_file(package: str, batching: type[Message]) -> descriptor_pb2.FileDescriptorProto:
    tfs_file = model_server_config_pb2.DESCRIPTOR
    file = descriptor_pb2.FileDescriptorProto(
        name=package.replace(".", "/") + "/model_server_config.proto", package=package, syntax="proto3",
        dependency=[tfs_file.name, any_pb2.DESCRIPTOR.name, file_system_storage_path_source_pb2.DESCRIPTOR.name,
                    logging_config_pb2.DESCRIPTOR.name, batching.DESCRIPTOR.file.name],
    )
    for name in _COPIED:
        tfs_file.message_types_by_name[name].CopyToProto(file.message_type.add())
    for message in file.message_type:
        for f in (*message.field, *(f for nested in message.nested_type for f in nested.field)):
            # Point the copies at each other (and at their own map entry), not at TF Serving's originals.
            if f.type_name.startswith(f".{_TFS}.") and f.type_name[len(_TFS) + 2:].split(".")[0] in _COPIED:
                f.type_name = f".{package}." + f.type_name[len(_TFS) + 2:]
    model_config = next(m for m in file.message_type if m.name == "ModelConfig")
    message_type, optional, repeated = (descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                                        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                                        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    model_config.field.add(name="default_version_policy", number=1001, type=message_type, label=optional,
                           type_name=f".{package}.DefaultVersionPolicy")
    model_config.field.add(name="batching_parameters", number=1002, type=message_type, label=optional,
                           type_name="." + batching.DESCRIPTOR.full_name)

    policy = file.message_type.add(name="DefaultVersionPolicy")
    policy.oneof_decl.add(name="policy_choice")
    for name, number in (("latest", 100), ("all", 101), ("specific", 102)):
        policy.field.add(name=name, number=number, type=message_type, label=optional, oneof_index=0,
                         type_name=f"{_POLICY}.{name.capitalize()}")
    policy.field.add(name="percentage", number=1, type=message_type, label=repeated,
                     type_name=f".{package}.Percentage")
    policy.field.add(name="sticky_key", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                     label=optional)
    for name, number in (("shadow", 3), ("rollback", 4), ("promote", 5)):
        policy.field.add(name=name, number=number, type=message_type, label=optional,
                         type_name=f".{package}.{name.capitalize()}")
    shadow = file.message_type.add(name="Shadow")
    shadow.oneof_decl.add(name="arm")
    for name, number in (("version", 1), ("label", 2)):
        shadow.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=optional, oneof_index=0)
    add_optional_scalar(shadow, "percent", 3, descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    rollback = file.message_type.add(name="Rollback")
    for name, number, kind in (("max_error_rate_increase", 1, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
                               ("max_p99_latency_ratio", 2, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
                               ("window_seconds", 3, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
                               ("min_requests", 4, descriptor_pb2.FieldDescriptorProto.TYPE_INT32)):
        add_optional_scalar(rollback, name, number, kind)
    promote = file.message_type.add(name="Promote")
    for name, number, kind in (("step_percent", 1, descriptor_pb2.FieldDescriptorProto.TYPE_INT32),
                               ("interval_seconds", 2, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)):
        add_optional_scalar(promote, name, number, kind)

    percentage = file.message_type.add(name="Percentage")
    percentage.oneof_decl.add(name="arm")
    for name, number in (("version", 1), ("label", 2)):
        percentage.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                             label=optional, oneof_index=0)
    add_optional_scalar(percentage, "value", 3, descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    return file


@functools.cache
def model_server_config_schemas() -> tuple[type[Message], type[Message]]:
    """The superset ModelServerConfig message classes, defined on first use: (with unwrapped batching_parameters,
    with TF Serving's wrapped ones). Text is tried against the first, then the second."""
    plain_batching, wrapped_batching = batching_schemas()
    out = []
    for package, batching in ((PACKAGE, plain_batching), (_WRAPPED_PACKAGE, wrapped_batching)):
        build_file(_superset_file(package, batching))
        out.append(message_class(f"{package}.ModelServerConfig"))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------------
# Reading


def parse_model_server_config(text: str, *, source: str = "<model config>") -> tuple[ModelConfig, ...]:
    """The models of a text-format ModelServerConfig (TF Serving's, or the superset in this module's docstring).

    Raises ConfigError naming `source`, the line and the field of the first problem, and what to write instead.
    """
    try:
        parsed = TextProto.parse(text, model_server_config_schemas(), source=source, hint=_HINT)
    except ConfigError as exc:
        # TF Serving's wording first: users' scripts grep for it; ours (file, line, fix) follows.
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {exc.message}",
                          source=exc.source, line=exc.line, column=exc.column, field=exc.field) from None
    message = parsed.message
    if message.HasField("custom_model_config"):
        raise parsed.error(
            (("custom_model_config", 0),),
            "not supported (TF Serving's model server refuses it too); list the models as "
            'model_config_list { config { name: "..." base_path: "/..." } }',
            field="custom_model_config",
        )
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for i, config in enumerate(message.model_config_list.config):
        model = _Model(parsed, i, config).build()
        if model.name in seen:
            raise parsed.error(
                (("model_config_list", 0), ("config", i), ("name", 0)),
                f"Illegal to list model {model.name} multiple times in config list; give each model one config "
                "entry (list several versions with model_version_policy instead)",
                field="name",
            )
        seen.add(model.name)
        models.append(model)
    return tuple(models)


def load_model_config_file(path: str) -> tuple[ModelConfig, ...]:
    """Read and parse `path` (as given to --model_config_file); errors name the path.

    An empty file is refused rather than read as "no models": that is what an editor or a `>` redirect leaves
    for a moment mid-write, and polling it must not unload everything. `model_config_list {}` says "no models"."""
    text = read_config_file(path, what="--model_config_file",
                            if_empty="To serve no models, write: model_config_list {}")
    return parse_model_server_config(text, source=path)


class _Model:
    """Turns one parsed `config { ... }` entry into a checked ModelConfig; errors point into the parsed text."""

    def __init__(self, parsed: TextProto, index: int, message: DynamicMessage) -> None:
        self.parsed, self.message = parsed, message
        self.at: FieldPath = (("model_config_list", 0), ("config", index))
        self.who = f'model "{message.name}"' if message.name else f"config entry {index + 1}"

    def fail(self, field: str, message: str, *, path: FieldPath | None = None) -> NoReturn:
        where = path if path is not None else tuple((name, 0) for name in field.split("."))
        raise self.parsed.error(self.at + where, message, field=f"{field} of {self.who}")

    def build(self) -> ModelConfig:
        m = self.message
        if not m.name:
            self.fail("name", 'is empty: give every model a name, e.g. name: "my_model" (clients use it in '
                              "/v1/models/<name> and in the gRPC model_spec)")
        labels = self._version_labels()
        policy, split = self._version_policy(labels)
        return ModelConfig(
            name=m.name,
            base_path=self._base_path(),
            platform=self._platform(),
            version_policy=policy,
            version_labels=tuple(sorted(labels.items())),
            traffic_split=split,
            batching=self._batching(),
            logging=self._logging(),
        )

    def _base_path(self) -> str:
        path: str = self.message.base_path
        if not path:
            self.fail("base_path", "is empty: give the directory that holds the model's numbered version "
                                   'directories, e.g. base_path: "/models/my_model"')
        if not (path.startswith("/") or _is_uri(path)):
            expand = (" Environment variables such as ${VAR} are not expanded (TF Serving does not expand them "
                      "either): write the path itself." if "$" in path else "")
            self.fail("base_path", f'must be an absolute path or URI; was "{path}". Write e.g. "/models/'
                                   f'{self.message.name}" or "gs://bucket/models/{self.message.name}" (relative '
                                   f"paths are refused, as in TF Serving).{expand}")
        return path

    def _platform(self) -> str:
        m = self.message
        supported = ", ".join(f'"{p}"' for p in sorted(PLATFORMS))
        model_type = model_server_config_pb2.ModelType.Name(m.model_type)
        if m.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
            if m.model_platform:
                self.fail("model_type", "Illegal setting both model_type (deprecated) and model_platform; keep "
                                        f'only model_platform: "{m.model_platform}"')
            if m.model_type != model_server_config_pb2.TENSORFLOW:
                self.fail("model_type", f"{model_type} is not supported; write model_platform: with one of "
                                        f"{supported}")
            return "tensorflow"
        platform = m.model_platform or "tensorflow"
        if platform not in PLATFORMS:
            self.fail("model_platform", f'"{platform}" is not supported; supported platforms: {supported}')
        return str(platform)

    def _version_labels(self) -> dict[str, int]:
        labels: dict[str, int] = {}
        for label, version in self.message.version_labels.items():
            if not label:
                self.fail("version_labels", "a label is empty: write version_labels { key: \"stable\" value: 1 }")
            if version < 0:
                self.fail("version_labels", f'label "{label}" points at version {version}; a version is a '
                                            "number >= 0 (the name of its directory under base_path)")
            labels[label] = int(version)
        return labels

    def _version_policy(self, labels: dict[str, int]) -> tuple[VersionPolicy, TrafficSplit | None]:
        m = self.message
        explicit: DynamicMessage | None = m.model_version_policy if m.HasField("model_version_policy") else None
        explicit_field = "model_version_policy"
        split = None
        if m.HasField("default_version_policy"):
            default = m.default_version_policy
            choice = default.WhichOneof("policy_choice")
            if choice and default.percentage:
                self.fail("default_version_policy", f"percentage cannot be combined with {choice} in one "
                          "default_version_policy: a traffic split serves exactly its versions; to serve more, "
                          "give them in model_version_policy { specific { versions: ... } }")
            if choice:
                if explicit is not None:
                    self.fail("default_version_policy", "default_version_policy (the article's name) and "
                              "model_version_policy (TF Serving's) say the same thing; keep one of them")
                explicit, explicit_field = default, "default_version_policy"
            if default.percentage:
                split = self._traffic_split(labels)
        policy = self._policy_from(explicit, explicit_field) if explicit is not None else None
        if split is not None:
            arms = [arm for arm, _ in split.arms] + ([split.shadow.arm] if split.shadow else [])
            needed = sorted({arm if isinstance(arm, int) else labels[arm] for arm in arms})
            if policy is None:
                policy = VersionPolicy(kind="specific", versions=tuple(needed))
            elif policy.kind == "specific" and (missing := [v for v in needed if v not in policy.versions]):
                self.fail(explicit_field, f"the traffic split sends requests to version(s) "
                          f"{', '.join(map(str, missing))}, which specific does not serve; add them to versions")
        return policy or VersionPolicy(), split

    def _policy_from(self, message: DynamicMessage, field: str) -> VersionPolicy:
        choice = message.WhichOneof("policy_choice")
        if choice == "all":
            return VersionPolicy(kind="all")
        if choice == "specific":
            versions = sorted(set(int(v) for v in message.specific.versions))
            if not versions:
                self.fail(f"{field}.specific", "lists no versions: write specific { versions: 1 } (one line per "
                          "version), or use latest {} for the newest")
            if versions[0] < 0:
                self.fail(f"{field}.specific", f"version {versions[0]} is not a version; versions are numbers >= 0 "
                          "(the names of the directories under base_path)")
            return VersionPolicy(kind="specific", versions=tuple(versions))
        # latest, or no choice at all: TF Serving serves the newest version; num_versions 0 means 1.
        return VersionPolicy(kind="latest", num_versions=max(int(message.latest.num_versions), 1))

    def _traffic_split(self, labels: dict[str, int]) -> TrafficSplit:
        arms: list[tuple[int | str, int]] = []
        for j, p in enumerate(self.message.default_version_policy.percentage):
            path: FieldPath = (("default_version_policy", 0), ("percentage", j))
            field = "default_version_policy.percentage"
            arm: int | str
            which = p.WhichOneof("arm")
            if which is None:
                self.fail(field, 'names no version: write percentage { version: "2" value: 70 } or '
                          'percentage { label: "canary" value: 30 }', path=path)
            if which == "version":
                if not (p.version.isascii() and p.version.isdigit()):
                    self.fail(field, f'version "{p.version}" is not a version number; write the number of its '
                              'directory, e.g. version: "2" (or label: "..." for a version label)', path=path)
                arm = int(p.version)
            else:
                if p.label not in labels:
                    known = ", ".join(f'"{k}"' for k in sorted(labels)) or "none"
                    self.fail(field, f'label "{p.label}" is not one of this model\'s version_labels (known: {known}); '
                              f'add version_labels {{ key: "{p.label}" value: <version> }}', path=path)
                arm = str(p.label)
            if not p.HasField("value"):
                self.fail(field, f"has no value: write the percentage of requests for {_arm_text(arm)}, e.g. "
                          "value: 30", path=path)
            if not 0 <= p.value <= 100:
                self.fail(field, f"value {p.value} for {_arm_text(arm)} is not a percentage; write 0 to 100",
                          path=path)
            if any(arm == a and type(arm) is type(a) for a, _ in arms):
                self.fail(field, f"{_arm_text(arm)} is listed twice; give each arm once", path=path)
            arms.append((arm, int(p.value)))
        total = sum(w for _, w in arms)
        if total != 100:
            shares = ", ".join(f"{_arm_text(a)}: {w}" for a, w in arms)
            self.fail("default_version_policy", f"percentage values must sum to 100; they sum to {total} ({shares})")
        default = self.message.default_version_policy
        return TrafficSplit(
            arms=tuple(arms),
            sticky_key=default.sticky_key.strip().lower(),
            shadow=self._shadow(labels) if default.HasField("shadow") else None,
            rollback=self._rollback() if default.HasField("rollback") else None,
            promotion=self._promotion() if default.HasField("promote") else None,
        )

    def _shadow(self, labels: dict[str, int]) -> ShadowTraffic:
        shadow = self.message.default_version_policy.shadow
        field = "default_version_policy.shadow"
        which = shadow.WhichOneof("arm")
        if which is None:
            self.fail(field, 'names no version: write shadow { version: "4" } (or label: "...")')
        if which == "version":
            if not (shadow.version.isascii() and shadow.version.isdigit()):
                self.fail(field, f'version "{shadow.version}" is not a version number; write e.g. version: "4"')
            arm: int | str = int(shadow.version)
        else:
            if shadow.label not in labels:
                self.fail(field, f'label "{shadow.label}" is not one of this model\'s version_labels')
            arm = str(shadow.label)
        percent = shadow.percent if shadow.HasField("percent") else 100
        if not 0 <= percent <= 100:
            self.fail(field, f"percent {percent} is not a percentage; write 0 to 100")
        return ShadowTraffic(arm=arm, percent=percent)

    def _rollback(self) -> RollbackGuard:
        r = self.message.default_version_policy.rollback
        field = "default_version_policy.rollback"
        guard = RollbackGuard(
            max_error_rate_increase=r.max_error_rate_increase if r.HasField("max_error_rate_increase") else 0.05,
            max_p99_latency_ratio=r.max_p99_latency_ratio if r.HasField("max_p99_latency_ratio") else 2.0,
            window_s=r.window_seconds if r.HasField("window_seconds") else 60.0,
            min_requests=r.min_requests if r.HasField("min_requests") else 100,
        )
        if not 0 <= guard.max_error_rate_increase <= 1:
            self.fail(field, "max_error_rate_increase is a fraction of requests: write 0 to 1 (0.05 = 5 points)")
        if guard.max_p99_latency_ratio < 1:
            self.fail(field, "max_p99_latency_ratio must be at least 1 (2.0 = twice the baseline's p99)")
        if guard.window_s <= 0 or guard.min_requests < 1:
            self.fail(field, "window_seconds must be positive and min_requests at least 1")
        return guard

    def _promotion(self) -> Promotion:
        p = self.message.default_version_policy.promote
        promotion = Promotion(
            step_percent=p.step_percent if p.HasField("step_percent") else 10,
            interval_s=p.interval_seconds if p.HasField("interval_seconds") else 60.0,
        )
        if not 1 <= promotion.step_percent <= 100 or promotion.interval_s <= 0:
            self.fail("default_version_policy.promote", "step_percent must be 1 to 100 and interval_seconds positive")
        return promotion

    def _batching(self) -> BatchingOptions | None:
        if not self.message.HasField("batching_parameters"):
            return None

        def fail(field: str, message: str) -> NoReturn:
            self.fail(f"batching_parameters.{field}", message)

        return batching_options_from_message(self.message.batching_parameters, fail=fail)

    def _logging(self) -> LoggingOptions | None:
        if not self.message.HasField("logging_config"):
            return None
        config = self.message.logging_config
        if config.HasField("custom_logging_config"):
            self.fail("logging_config.custom_logging_config", "is not supported; use log_collector_config and "
                      "sampling_config")
        sampling = config.sampling_config
        if sampling.per_task_sampling_configs:
            self.fail("logging_config.sampling_config.per_task_sampling_configs", "is not supported; give one "
                      "sampling_rate")
        rate = float(sampling.sampling_rate)
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            self.fail("logging_config.sampling_config.sampling_rate", f"must be within [0, 1] (the fraction of "
                      f"requests to log); was {rate}")
        collector = config.log_collector_config
        options = LoggingOptions(sampling_rate=rate, collector_type=collector.type,
                                 filename_prefix=collector.filename_prefix)
        try:
            check_logging_options(options)
        except ValueError as exc:
            self.fail("logging_config.log_collector_config", str(exc))
        return options


def _is_uri(path: str) -> bool:
    scheme, sep, rest = path.partition("://")
    return bool(sep and rest and scheme[:1].isalpha() and all(c.isalnum() or c in "+.-" for c in scheme))


def _arm_text(arm: int | str) -> str:
    return f"version {arm}" if isinstance(arm, int) else f'label "{arm}"'


# ---------------------------------------------------------------------------------------------------------------
# Writing


def model_config_to_text(models: Iterable[ModelConfig]) -> str:
    """A superset ModelServerConfig text that parse_model_server_config reads back as `models`.

    Uses TF Serving's own fields where they say it (model_version_policy, version_labels, logging_config), the
    article's only for what TF Serving cannot say (percentage splits, per-model unwrapped batching_parameters).
    """
    message: DynamicMessage = model_server_config_schemas()[0]()
    message.model_config_list.SetInParent()
    for model in models:
        c = message.model_config_list.config.add(name=model.name, base_path=model.base_path,
                                                 model_platform=model.platform)
        policy = model.version_policy
        if policy.kind == "all":
            c.model_version_policy.all.SetInParent()
        elif policy.kind == "specific":
            c.model_version_policy.specific.versions.extend(policy.versions)
        elif policy.num_versions != 1 or model.traffic_split is not None:
            # With a split, an unwritten policy would mean "the split's versions": write latest explicitly.
            c.model_version_policy.latest.num_versions = policy.num_versions
        for label, version in model.version_labels:
            c.version_labels[label] = version
        if model.traffic_split is not None:
            for arm, weight in model.traffic_split.arms:
                if isinstance(arm, int):
                    c.default_version_policy.percentage.add(version=str(arm), value=weight)
                else:
                    c.default_version_policy.percentage.add(label=arm, value=weight)
        if model.batching is not None:
            c.batching_parameters.SetInParent()
            defaults = BatchingOptions()
            for name in BatchingOptions.__dataclass_fields__:
                value = getattr(model.batching, name)
                if value == getattr(defaults, name):
                    continue
                if name == "allowed_batch_sizes":
                    c.batching_parameters.allowed_batch_sizes.extend(value)
                else:
                    setattr(c.batching_parameters, name, value)
        if model.logging is not None:
            c.logging_config.log_collector_config.type = model.logging.collector_type
            c.logging_config.log_collector_config.filename_prefix = model.logging.filename_prefix
            c.logging_config.sampling_config.sampling_rate = model.logging.sampling_rate
            c.logging_config.SetInParent()
    return str(text_format.MessageToString(message, as_utf8=True))
