/**
 * The domain XML fitha keeps for a VM (`fitha vm add --xml F`, VmRecord.xml): the operator's
 * file, checked and completed as text with as few changes as possible (libvirt parses it for
 * real when the VM is defined):
 *
 * - the root must be <domain> with a <name> (domain-xml.ts reads both);
 * - a missing <uuid> is generated and inserted after the <name>; one that is no UUID is refused;
 * - an HA VM's XML carries fitha's lease element (lease-metadata.ts) in the domain's <metadata>
 *   (created if absent), naming its lease slot and its UUID as the resource; an element already
 *   there is replaced (one from elsewhere names a slot fitha did not allocate). A VM that is not
 *   HA carries none: its element would make the qemu hook take a lease nobody allocated.
 *
 * Every result is read back with leaseMetadata, the reader the qemu hook uses, so what is
 * stored is exactly what the hook will read, or an error.
 */
import { randomUUID } from "node:crypto";
import { ExitCode, FithaError } from "../errors.ts";
import { vmUuidPattern } from "../store/keys.ts";
import { maxVmXmlBytes, vmNamePattern } from "../store/records.ts";
import { domainIdentity } from "./domain-xml.ts";
import { leaseMetadata, LeaseMetadataError, leaseNamespace, type LeaseMetadata } from "./lease-metadata.ts";

/**
 * The largest file fitha takes: half the stored record's bound, so that what fitha adds (a
 * UUID, the lease element) always fits. A real domain is a few KiB.
 */
export const maxDefinitionBytes = maxVmXmlBytes / 2;

/** The domain XML is not one fitha can keep for a VM: invalid input, nothing was done. */
export class DomainXmlError extends FithaError {
  constructor(message: string) {
    super(message, ExitCode.usage);
    this.name = "DomainXmlError";
  }
}

export interface DomainDefinition {
  readonly name: string;
  /** Lower case (as keys and the lease resource hold it). */
  readonly uuid: string;
  /** The XML with its <uuid>; its lease element, if any, is still the file's. */
  readonly xml: string;
}

/**
 * Checks a domain XML for `fitha vm add` and gives it a <uuid> if it has none. A lease element
 * already in it must be readable (setLeaseElement replaces or removes it later), so that a bad
 * one is refused before anything is allocated for the VM.
 */
export function readDomainDefinition(xml: string, newUuid: () => string = randomUUID): DomainDefinition {
  const bytes = Buffer.byteLength(xml, "utf8");
  if (bytes > maxDefinitionBytes) throw new DomainXmlError(`domain XML of ${bytes} bytes is larger than the ${maxDefinitionBytes} bytes fitha keeps`);
  const { isDomain, name, uuid } = domainIdentity(xml);
  if (!isDomain) throw new DomainXmlError("the root element is not <domain> (expected libvirt's domain XML, as `virsh dumpxml` prints it)");
  if (name === undefined) throw new DomainXmlError("the domain has no <name>");
  if (!vmNamePattern.test(name)) throw new DomainXmlError(`the domain's <name> ${JSON.stringify(name)} must be 1 to 255 characters without "/" or control characters`);
  leaseMetadata(xml);
  if (uuid !== undefined) {
    const lowered = uuid.toLowerCase();
    if (!vmUuidPattern.test(lowered)) throw new DomainXmlError(`the domain's <uuid> ${JSON.stringify(uuid)} is not a UUID (expected 8-4-4-4-12 hex digits, e.g. 6f1c8a3e-2b7d-4c1e-9a55-0d3b2f4e8c71)`);
    return { name, uuid: lowered, xml };
  }
  const generated = newUuid();
  const nameElement = /<name>[^<]*<\/name>/.exec(xml)!; // domainIdentity's reading of the <name>
  const after = nameElement.index + nameElement[0].length;
  const withUuid = `${xml.slice(0, after)}${lineBreak(xml, nameElement.index, "")}<uuid>${generated}</uuid>${xml.slice(after)}`;
  if (domainIdentity(withUuid).uuid !== generated) throw new DomainXmlError("cannot insert a <uuid> after the domain's <name>; add one to the file");
  return { name, uuid: generated, xml: withUuid };
}

/**
 * The XML with fitha's lease element naming `lease` (null: with none), replacing or removing the
 * one it has. Throws a DomainXmlError or LeaseMetadataError when the XML has a bad one, or when
 * the result would not read back as `lease`.
 */
export function setLeaseElement(xml: string, lease: LeaseMetadata | null): string {
  const existing = leaseElementRange(xml);
  const element = lease === null ? "" : `<fitha:lease xmlns:fitha="${leaseNamespace}" slot="${lease.slot}" resource="${escapeAttribute(lease.resource)}"/>`;
  let result: string;
  if (existing === undefined) result = lease === null ? xml : insertIntoMetadata(xml, element);
  else if (lease !== null) result = `${xml.slice(0, existing.start)}${element}${xml.slice(existing.end)}`;
  else {
    // The element's line goes with it when the element stood alone on it.
    const lineStart = xml.lastIndexOf("\n", existing.start - 1);
    const from = lineStart >= 0 && /^[ \t]*$/.test(xml.slice(lineStart + 1, existing.start)) ? lineStart : existing.start;
    result = `${xml.slice(0, from)}${xml.slice(existing.end)}`;
  }
  const readBack = leaseMetadata(result);
  if (lease === null ? readBack !== undefined : readBack?.slot !== lease.slot || readBack.resource !== lease.resource) {
    throw new DomainXmlError(`fitha's lease element could not be placed as a direct child of the domain's <metadata>, where the qemu hook reads it (read back: ${JSON.stringify(readBack ?? null)})`);
  }
  return result;
}

/** A start tag's attributes and its end, as lease-metadata.ts reads them. */
const attributesAndEnd = String.raw`(?:\s+[^\s<>/="'!?]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*\s*(\/?)>`;
/** A start tag named lease, with any prefix: the candidates for fitha's element. */
const leaseStartPattern = new RegExp(String.raw`<((?:[^\s<>/="'!?:]+:)?lease)${attributesAndEnd}`, "g");
/** What may stand between an empty element's start and end tags, and the end tag. */
const emptyContentAndEndPattern = /(?:\s+|<!--[\s\S]*?-->|<\?[\s\S]*?\?>)*<\/([^\s<>/="'!?]+)\s*>/y;
/** Far more than a real domain holds (one, plus maybe a commented-out copy). */
const maxLeaseCandidates = 64;

interface Range {
  readonly start: number;
  readonly end: number;
}

/**
 * Where fitha's lease element is in the text, if it has one. Which element is fitha's is
 * leaseMetadata's decision (namespaces, nesting, comments): the element is the empty <…lease>
 * whose removal leaves a document in which leaseMetadata finds none. (lease-metadata.ts's
 * scanner does not report offsets; asking it keeps one definition of fitha's element.)
 */
function leaseElementRange(xml: string): Range | undefined {
  const found = leaseMetadata(xml);
  if (found === undefined) return undefined;
  let tried = 0;
  for (const match of xml.matchAll(leaseStartPattern)) {
    let end = match.index + match[0].length;
    if (match[2] !== "/") {
      emptyContentAndEndPattern.lastIndex = end;
      const close = emptyContentAndEndPattern.exec(xml);
      if (close?.[1] !== match[1]) continue;
      end = emptyContentAndEndPattern.lastIndex;
    }
    if (++tried > maxLeaseCandidates) break;
    if (readsNoLease(`${xml.slice(0, match.index)}${xml.slice(end)}`)) return { start: match.index, end };
  }
  throw new DomainXmlError(`cannot locate the text of fitha's lease element (slot ${found.slot}) among the first ${maxLeaseCandidates} empty <…lease> elements`);
}

function readsNoLease(xml: string): boolean {
  try {
    return leaseMetadata(xml) === undefined;
  } catch (error) {
    if (error instanceof LeaseMetadataError) return false;
    throw error;
  }
}

/** `element` as the first child of the domain's <metadata>, which is created if absent. */
function insertIntoMetadata(xml: string, element: string): string {
  const metadata = new RegExp(`<metadata${attributesAndEnd}`).exec(xml);
  if (metadata !== null) {
    const start = metadata.index;
    const end = start + metadata[0].length;
    const before = lineBreak(xml, start, "  ");
    if (metadata[1] !== "/") return `${xml.slice(0, end)}${before}${element}${xml.slice(end)}`;
    // <metadata/>: opened and closed around the element.
    return `${xml.slice(0, start)}${metadata[0].replace(/\s*\/>$/, ">")}${before}${element}${lineBreak(xml, start, "")}</metadata>${xml.slice(end)}`;
  }
  const domainEnd = xml.lastIndexOf("</domain>");
  if (domainEnd < 0) throw new DomainXmlError("the domain has no </domain> end tag");
  // Indented like the domain's other children (its <name>) when </domain> stands on its own line.
  const endIndent = lineIndentation(xml, domainEnd);
  if (endIndent === undefined) return `${xml.slice(0, domainEnd)}<metadata>${element}</metadata>${xml.slice(domainEnd)}`;
  const nameAt = xml.indexOf("<name>");
  const child = (nameAt < 0 ? undefined : lineIndentation(xml, nameAt)) ?? `${endIndent}  `;
  const at = domainEnd - endIndent.length;
  return `${xml.slice(0, at)}${child}<metadata>\n${child}  ${element}\n${child}</metadata>\n${xml.slice(at)}`;
}

/**
 * What separates an inserted element from what comes before it: a new line indented like the
 * element at `index` plus `extra`, when that element starts its own line; else nothing.
 */
function lineBreak(xml: string, index: number, extra: string): string {
  const indentation = lineIndentation(xml, index);
  return indentation === undefined ? "" : `\n${indentation}${extra}`;
}

/** The blanks before `index` on its line, if there is nothing else before it there. */
function lineIndentation(xml: string, index: number): string | undefined {
  const lead = xml.slice(xml.lastIndexOf("\n", index - 1) + 1, index);
  return /^[ \t]*$/.test(lead) ? lead : undefined;
}

const attributeEscapes: Record<string, string> = { "&": "&amp;", "<": "&lt;", '"': "&quot;" };

function escapeAttribute(value: string): string {
  return value.replace(/[&<"]/g, (character) => attributeEscapes[character]!);
}
