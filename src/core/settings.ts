/**
 * Settings that may change while fitha runs (`fitha config get | set`), stored in etcd
 * (P/settings) and applied by the controller and the agents without a restart. Everything that
 * needs a restart lives in fitha.toml instead.
 *
 * Heartbeats: an agent renews its heartbeat key on each plane every heartbeat_interval_ms; the
 * key lives under an etcd lease of heartbeat_ttl_ms, so it vanishes that long after the last
 * renewal, which is when the controller sees the plane down. Then the strategy's grace period
 * runs. Worst-case detection (a host dies right after a renewal):
 *   heartbeat_ttl_ms + etcd's expiry check (≤ 0.5 s) + grace_ms + a controller step (~50 ms)
 *   = 180.6 s at the defaults (measured: scripts/bench/README.md, "control-plane").
 */
import { Fields, type Codec } from "../store/codec.ts";

export interface RuntimeSettings {
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTtlMs: number;
  /** Self-defense: HA stops when at least this share of the hosts is down (in an HA row). */
  readonly selfDefenseDownPercent: number;
  /** Self-recovery: HA resumes when at least this share of the hosts is healthy (every plane up). */
  readonly selfRecoveryHealthyPercent: number;
  /** Recoveries running at once, cluster-wide and per target host (the recovery executor obeys them). */
  readonly recoveryConcurrency: number;
  readonly recoveryConcurrencyPerHost: number;
}

interface SettingSpec {
  readonly field: keyof RuntimeSettings;
  readonly min: number;
  readonly max: number;
  readonly default: number;
  readonly doc: string;
}

/** Every setting by its name in `fitha config get|set` and in the stored JSON. */
export const settingSpecs = {
  heartbeat_interval_ms: { field: "heartbeatIntervalMs", min: 200, max: 600_000, default: 20_000, doc: "How often an agent renews its heartbeat on each plane." },
  heartbeat_ttl_ms: { field: "heartbeatTtlMs", min: 1_000, max: 3_600_000, default: 60_000, doc: "How long a heartbeat outlives its last renewal (etcd lease TTL); at least twice the interval." },
  self_defense_down_percent: { field: "selfDefenseDownPercent", min: 1, max: 100, default: 50, doc: "Stop all HA when this share of hosts (in percent) is down." },
  self_recovery_healthy_percent: { field: "selfRecoveryHealthyPercent", min: 1, max: 100, default: 70, doc: "Resume HA when this share of hosts (in percent) is healthy again." },
  recovery_concurrency: { field: "recoveryConcurrency", min: 1, max: 10_000, default: 10, doc: "Recoveries in progress at once, cluster-wide." },
  recovery_concurrency_per_host: { field: "recoveryConcurrencyPerHost", min: 1, max: 1_000, default: 2, doc: "Recoveries in progress at once onto one target host." },
} as const satisfies Record<string, SettingSpec>;

export type SettingName = keyof typeof settingSpecs;
export const settingNames = Object.keys(settingSpecs) as SettingName[];

export const defaultSettings: RuntimeSettings = Object.freeze(
  Object.fromEntries(settingNames.map((name) => [settingSpecs[name].field, settingSpecs[name].default])) as unknown as RuntimeSettings,
);

/**
 * Decodes stored settings: a missing setting takes its default (a newer fitha may add some), an
 * unknown or invalid one is an error naming it, and so are combinations that cannot work.
 */
export const decodeSettings: Codec<RuntimeSettings> = (raw, source) => {
  const f = new Fields(source);
  const r = f.object(raw, "", settingNames);
  const settings = Object.fromEntries(
    settingNames.map((name) => {
      const spec: SettingSpec = settingSpecs[name];
      return [spec.field, r[name] === undefined ? spec.default : f.integer(r[name], name, spec.min, spec.max)];
    }),
  ) as unknown as RuntimeSettings;
  if (f.problems.length === 0) for (const problem of inconsistencies(settings)) f.problem("", problem);
  return f.done(settings);
};

/** Combinations of valid values that would not work. */
function inconsistencies(s: RuntimeSettings): string[] {
  const problems: string[] = [];
  // One lost renewal must not take a plane down.
  if (s.heartbeatTtlMs < 2 * s.heartbeatIntervalMs) problems.push(`heartbeat_ttl_ms (${s.heartbeatTtlMs}) must be at least twice heartbeat_interval_ms (${s.heartbeatIntervalMs})`);
  // Between entering (down ≥ D %) and leaving (healthy ≥ H %) there must be a gap, or HA would
  // flap: the two regions overlap unless H > 100 − D.
  if (s.selfRecoveryHealthyPercent <= 100 - s.selfDefenseDownPercent) {
    problems.push(`self_recovery_healthy_percent (${s.selfRecoveryHealthyPercent}) must be above 100 − self_defense_down_percent (${100 - s.selfDefenseDownPercent}), or self-defense would flap`);
  }
  if (s.recoveryConcurrencyPerHost > s.recoveryConcurrency) problems.push(`recovery_concurrency_per_host (${s.recoveryConcurrencyPerHost}) cannot exceed recovery_concurrency (${s.recoveryConcurrency})`);
  return problems;
}

/** The stored JSON form (every setting, by name). */
export function settingsToJson(settings: RuntimeSettings): Record<SettingName, number> {
  return Object.fromEntries(settingNames.map((name) => [name, settings[settingSpecs[name].field]])) as Record<SettingName, number>;
}

/** `settings` with `name` set to `text` (as typed by an operator), checked as a whole. */
export function withSetting(settings: RuntimeSettings, name: string, text: string): RuntimeSettings {
  if (!(settingNames as string[]).includes(name)) {
    throw new RangeError(`unknown setting "${name}" (settings: ${settingNames.join(", ")})`);
  }
  const value = /^-?[0-9]+$/.test(text) ? Number(text) : text;
  return decodeSettings({ ...settingsToJson(settings), [name]: value }, `setting ${name}`);
}
