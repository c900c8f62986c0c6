/**
 * Which VM lease a domain runs under, from fitha's element in the domain XML's <metadata>:
 *
 *   <metadata>
 *     <fitha:lease xmlns:fitha="https://fitha.dev/xmlns/lease/1" slot="12" resource="..."/>
 *   </metadata>
 *
 * `slot` is the VM lease slot in the lockspace; `resource` is the name the lease is held under,
 * by default the domain's UUID. A domain without the element is not HA-managed. Anything that
 * looks like fitha's but is not exactly this element is an error, never "not HA-managed": an HA
 * VM that silently lost its lease could run on two hosts at once.
 *
 * Not a general XML parser: a scanner of libvirt's own output (well-formed, no DTD) that tracks
 * elements and namespace declarations, which is what finding one namespaced element needs. The
 * prefix is the document's choice (libvirt keeps whatever the domain was defined with), so the
 * element is recognised by its namespace, not by the text "fitha:".
 */
import { ExitCode, FithaError } from "../errors.ts";
import { decodeEntities, domainIdentity } from "./domain-xml.ts";

export const leaseNamespace = "https://fitha.dev/xmlns/lease/1";
/** Far above any real domain (a few KiB; hundreds of disks stay under 1 MiB). */
export const maxDomainXmlBytes = 4 * 1024 * 1024;
/** lockd's limit for a lease's resource name (src/lockd/protocol.ts). */
const maxResourceBytes = 64;

export interface LeaseMetadata {
  readonly slot: number;
  readonly resource: string;
}

/** The domain XML names its lease in a way fitha cannot use: its start must be refused. */
export class LeaseMetadataError extends FithaError {
  constructor(message: string) {
    // Like a bad configuration file: invalid input, nothing was done.
    super(message, ExitCode.usage);
    this.name = "LeaseMetadataError";
  }
}

/** The domain's lease, or undefined for a domain that is not HA-managed. Throws LeaseMetadataError. */
export function leaseMetadata(xml: string): LeaseMetadata | undefined {
  const bytes = Buffer.byteLength(xml, "utf8");
  if (bytes > maxDomainXmlBytes) throw new LeaseMetadataError(`domain XML of ${bytes} bytes is larger than the ${maxDomainXmlBytes} bytes fitha reads`);
  // fitha's element needs fitha's namespace name in the text. A document without it is not
  // scanned at all, so that a limit of this scanner can never refuse the start of a non-HA VM.
  if (!xml.includes("fitha")) return undefined;
  const element = findLeaseElement(xml);
  if (element === undefined) return undefined;
  for (const attribute of element.attributes.keys()) {
    if (attribute === "xmlns" || attribute.startsWith("xmlns:") || leaseAttributes.includes(attribute)) continue;
    throw new LeaseMetadataError(`<${element.name}> has an unknown attribute ${attribute} (it takes ${leaseAttributes.join(", ")})`);
  }
  return { slot: slotOf(element), resource: resourceOf(element, xml) };
}

const leaseAttributes: readonly string[] = ["slot", "resource"];

interface OpenElement {
  readonly name: string;
  /** Prefix ("" for the default namespace) → namespace name, as in scope inside this element. */
  readonly namespaces: ReadonlyMap<string, string>;
  readonly isLease: boolean;
}

interface LeaseElement {
  /** As written, with the document's prefix. */
  readonly name: string;
  readonly attributes: ReadonlyMap<string, string>;
}

const namePattern = /[^\s<>/="'!?]+/y;
const whitespacePattern = /\s*/y;
const attributeValuePattern = /=\s*(?:"([^"<]*)"|'([^'<]*)')/y;
const endTagPattern = /<\/([^\s<>/="'!?]+)\s*>/y;

function findLeaseElement(xml: string): LeaseElement | undefined {
  const open: OpenElement[] = [];
  let found: LeaseElement | undefined;
  let position = 0;
  for (;;) {
    const lt = xml.indexOf("<", position);
    const top = open.at(-1);
    if (top?.isLease && xml.slice(position, lt < 0 ? undefined : lt).trim() !== "") throw notEmpty(top.name);
    if (lt < 0) break;
    if (xml.startsWith("<!--", lt)) {
      position = skipPast(xml, lt, "<!--", "-->", "comment");
    } else if (xml.startsWith("<![CDATA[", lt)) {
      if (top?.isLease) throw notEmpty(top.name);
      position = skipPast(xml, lt, "<![CDATA[", "]]>", "CDATA section");
    } else if (xml.startsWith("<?", lt)) {
      position = skipPast(xml, lt, "<?", "?>", "processing instruction");
    } else if (xml.startsWith("<!", lt)) {
      throw malformed(`a document type declaration at offset ${lt} (libvirt never writes one)`);
    } else if (xml.startsWith("</", lt)) {
      endTagPattern.lastIndex = lt;
      const match = endTagPattern.exec(xml);
      if (match === null) throw malformed(`an unreadable end tag at offset ${lt}`);
      const closed = open.pop();
      if (closed?.name !== match[1]) throw malformed(`</${match[1]}> at offset ${lt} closes ${closed === undefined ? "nothing" : `<${closed.name}>`}`);
      position = endTagPattern.lastIndex;
    } else {
      const tag = readStartTag(xml, lt);
      if (top?.isLease) throw notEmpty(top.name);
      const namespaces = scope(top?.namespaces ?? new Map<string, string>(), tag.attributes);
      const isLease = isFithaElement(tag.name, namespaces, open);
      if (isLease) {
        if (found !== undefined) throw new LeaseMetadataError(`the domain's <metadata> has more than one <${tag.name}> element; a domain has one lease`);
        found = { name: tag.name, attributes: tag.attributes };
      }
      if (!tag.selfClosing) open.push({ name: tag.name, namespaces, isLease });
      position = tag.end;
    }
  }
  const unclosed = open.at(-1);
  if (unclosed !== undefined) throw malformed(`<${unclosed.name}> is never closed`);
  return found;
}

/**
 * Whether this element is fitha's lease element; throws for anything fitha-like that is not
 * exactly that (a typo must not turn an HA VM into an unprotected one).
 */
function isFithaElement(name: string, namespaces: ReadonlyMap<string, string>, ancestors: readonly OpenElement[]): boolean {
  const [prefix, local] = name.includes(":") ? (name.split(":", 2) as [string, string]) : ["", name];
  const namespace = namespaces.get(prefix);
  const looksLikeFitha = namespace === leaseNamespace || namespace?.includes("fitha.dev") === true || prefix === "fitha";
  if (!looksLikeFitha) return false;
  if (namespace === undefined) throw new LeaseMetadataError(`<${name}> uses the prefix "${prefix}" without declaring it (xmlns:${prefix}="${leaseNamespace}")`);
  if (namespace !== leaseNamespace) throw new LeaseMetadataError(`<${name}> is in namespace "${namespace}", which this fitha does not know (it reads "${leaseNamespace}")`);
  if (local !== "lease") throw new LeaseMetadataError(`<${name}> is not an element of fitha's lease metadata (the only one is <lease>)`);
  const [root, parent, ...deeper] = ancestors;
  if (root?.name !== "domain" || parent?.name !== "metadata" || deeper.length > 0) {
    throw new LeaseMetadataError(`<${name}> must be a direct child of the domain's <metadata>, not of <${ancestors.at(-1)?.name ?? "nothing"}>`);
  }
  return true;
}

function slotOf({ name, attributes }: LeaseElement): number {
  const slot = attributes.get("slot");
  if (slot === undefined) throw new LeaseMetadataError(`<${name}> has no slot attribute (the VM's lease slot, e.g. slot="12")`);
  const value = Number(slot);
  if (!/^[0-9]+$/.test(slot) || !Number.isSafeInteger(value)) throw new LeaseMetadataError(`<${name}> slot "${slot}" is not a whole number`);
  return value;
}

function resourceOf({ name, attributes }: LeaseElement, xml: string): string {
  const given = attributes.get("resource");
  if (given === undefined) {
    const { uuid } = domainIdentity(xml);
    if (uuid === undefined) throw new LeaseMetadataError(`<${name}> has no resource attribute and the domain has no <uuid> to default to`);
    return uuid;
  }
  const bytes = Buffer.byteLength(given, "utf8");
  if (bytes === 0 || bytes > maxResourceBytes || /[\s\p{Cc}]/u.test(given)) {
    throw new LeaseMetadataError(`<${name}> resource ${JSON.stringify(given)} must be 1 to ${maxResourceBytes} bytes without spaces or control characters`);
  }
  return given;
}

interface StartTag {
  readonly name: string;
  /** Values with the predefined entities decoded. */
  readonly attributes: ReadonlyMap<string, string>;
  readonly selfClosing: boolean;
  /** Offset just past the tag. */
  readonly end: number;
}

function readStartTag(xml: string, lt: number): StartTag {
  namePattern.lastIndex = lt + 1;
  const name = namePattern.exec(xml)?.[0];
  if (name === undefined) throw malformed(`an unreadable tag at offset ${lt}`);
  const attributes = new Map<string, string>();
  let position = namePattern.lastIndex;
  for (;;) {
    whitespacePattern.lastIndex = position;
    const spaced = (whitespacePattern.exec(xml)?.[0].length ?? 0) > 0;
    position = whitespacePattern.lastIndex;
    if (xml.startsWith(">", position)) return { name, attributes, selfClosing: false, end: position + 1 };
    if (xml.startsWith("/>", position)) return { name, attributes, selfClosing: true, end: position + 2 };
    namePattern.lastIndex = position;
    const attribute = spaced ? namePattern.exec(xml)?.[0] : undefined;
    if (attribute === undefined) throw malformed(`an unreadable attribute in <${name}> at offset ${position}`);
    attributeValuePattern.lastIndex = namePattern.lastIndex;
    const value = attributeValuePattern.exec(xml);
    if (value === null) throw malformed(`attribute ${attribute} of <${name}> at offset ${position} has no quoted value`);
    if (attributes.has(attribute)) throw malformed(`attribute ${attribute} appears twice in <${name}> at offset ${lt}`);
    attributes.set(attribute, decodeEntities(value[1] ?? value[2] ?? ""));
    position = attributeValuePattern.lastIndex;
  }
}

/** The namespaces in scope inside an element: its parent's, plus the ones it declares. */
function scope(parent: ReadonlyMap<string, string>, attributes: ReadonlyMap<string, string>): ReadonlyMap<string, string> {
  let namespaces: Map<string, string> | undefined;
  for (const [attribute, value] of attributes) {
    if (attribute !== "xmlns" && !attribute.startsWith("xmlns:")) continue;
    namespaces ??= new Map(parent);
    namespaces.set(attribute === "xmlns" ? "" : attribute.slice("xmlns:".length), value);
  }
  return namespaces ?? parent;
}

/** The offset just past the construct that starts with `opener` at `start`. */
function skipPast(xml: string, start: number, opener: string, terminator: string, what: string): number {
  const at = xml.indexOf(terminator, start + opener.length);
  if (at < 0) throw malformed(`a ${what} at offset ${start} is never closed`);
  return at + terminator.length;
}

function notEmpty(name: string): LeaseMetadataError {
  return new LeaseMetadataError(`<${name}> must be empty: its settings are attributes`);
}

function malformed(problem: string): LeaseMetadataError {
  return new LeaseMetadataError(`domain XML mentions fitha but is not well-formed: ${problem}`);
}
