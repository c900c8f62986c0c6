/** What the long-running roles (lockd, watchdog, agent, controller) share on the command line. */
import { planes, type FithaConfig, type Plane } from "../config/fitha-config.ts";
import { readEtcdCredentials } from "../store/credentials.ts";
import { EtcdKv } from "../store/etcd-kv.ts";
import type { Kv } from "../store/kv.ts";

/** Resolves with the signal's name at the first SIGTERM or SIGINT: the daemon then stops cleanly. */
export function stopSignal(): Promise<string> {
  return new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
}

/** A client for each plane's etcd cluster (credentials read once, from the files the config names). */
export function connectPlanes(config: FithaConfig): Record<Plane, Kv> {
  const credentials = readEtcdCredentials(config.etcd);
  const connect = (plane: Plane): Kv => EtcdKv.connect(config.etcd, plane, credentials);
  return { management: connect("management"), storage: connect("storage"), service: connect("service") };
}

export function closePlanes(kv: Readonly<Record<Plane, Kv>>): void {
  for (const plane of planes) kv[plane].close();
}
