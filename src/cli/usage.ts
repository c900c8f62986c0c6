/** `--help` text, plain and left-aligned (citty's renderer right-aligns options and pads lines). */
import type { ArgDef, ArgsDef, CommandMeta } from "citty";
import { formatTable } from "./output.ts";

export interface UsageParts {
  path: string;
  meta: CommandMeta;
  args: ArgsDef;
  /** Sub-command name → description; empty for a command that runs. */
  subCommands: ReadonlyArray<readonly [string, string]>;
}

export function renderUsage({ path, meta, args, subCommands }: UsageParts): string {
  const entries = Object.entries(args);
  const positionals = entries.filter(([, def]) => def.type === "positional");
  const options = entries.filter(([, def]) => def.type !== "positional");
  const synopsis = [
    path,
    ...(subCommands.length > 0 ? ["<command>"] : []),
    ...positionals.map(([name, def]) => (def.required === false ? `[${name.toUpperCase()}]` : name.toUpperCase())),
    ...(options.length > 0 ? ["[options]"] : []),
  ].join(" ");
  const lines = [`${meta.description ?? path}`, "", `Usage: ${synopsis}`];
  if (subCommands.length > 0) lines.push("", "Commands:", ...indent(formatTable([], subCommands.map(([name, doc]) => [name, doc]))));
  if (positionals.length > 0) {
    lines.push("", "Arguments:", ...indent(formatTable([], positionals.map(([name, def]) => [name.toUpperCase(), def.description ?? ""]))));
  }
  const optionRows = options.map(([name, def]) => [optionSynopsis(name, def), def.description ?? ""]);
  lines.push("", "Options:", ...indent(formatTable([], [...optionRows, ["-h, --help", "Show this help"]])));
  if (subCommands.length > 0) lines.push("", `Run "${path} <command> --help" for a command's options.`);
  return `${lines.join("\n")}\n`;
}

function optionSynopsis(name: string, def: ArgDef): string {
  if (def.type === "enum") return `--${name} ${(def.options ?? []).join("|")}`;
  if (def.type === "string") return `--${name} ${def.valueHint ?? "VALUE"}`;
  return `--${name}`;
}

const indent = (lines: readonly string[]): string[] => lines.map((line) => `  ${line}`);
