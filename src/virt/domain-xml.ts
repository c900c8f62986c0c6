/**
 * Just enough of libvirt's domain XML to know which domain a document describes: its <name> and
 * <uuid>. Not a parser: it reads the first <name> and <uuid> elements, which in libvirt's format
 * are the domain's own (they come before any nested element that could hold a <name>, such as
 * <metadata>). libvirt itself parses the XML for real; this serves error messages and the
 * in-memory hypervisor.
 */

export interface DomainIdentity {
  /** undefined when the document has no domain root or no <name>. */
  readonly name: string | undefined;
  /** As written (not normalised); undefined when absent. */
  readonly uuid: string | undefined;
  /** Whether the root element is <domain>. */
  readonly isDomain: boolean;
}

const rootPattern = /^\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--[\s\S]*?-->\s*)*<domain[\s>/]/;

export function domainIdentity(xml: string): DomainIdentity {
  const isDomain = rootPattern.test(xml);
  return {
    isDomain,
    name: isDomain ? element(xml, "name") : undefined,
    uuid: isDomain ? element(xml, "uuid") : undefined,
  };
}

/** The trimmed text of the first <tag>…</tag>, entities decoded; undefined if absent or empty. */
function element(xml: string, tag: string): string | undefined {
  const text = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)?.[1]?.trim();
  return text === undefined || text === "" ? undefined : decodeEntities(text);
}

const entities: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** The five predefined XML entities (a domain name with others is not worth a parser). */
export function decodeEntities(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos);/g, (_, entity: string) => entities[entity]!);
}

export interface DomainResources {
  readonly memoryKiB: number;
  readonly vcpus: number;
}

/** libvirt's <memory unit='…'> units, in KiB (libvirt's default unit is KiB). */
const memoryUnitsKiB: Record<string, number> = { b: 1 / 1024, bytes: 1 / 1024, k: 1, kib: 1, kb: 1000 / 1024, m: 1024, mib: 1024, mb: 1e6 / 1024, g: 1024 ** 2, gib: 1024 ** 2, gb: 1e9 / 1024, t: 1024 ** 3, tib: 1024 ** 3, tb: 1e12 / 1024 };

/**
 * What a domain needs from a host, for placement: its <memory> (in its unit) and its <vcpu>
 * count (1 when absent, as libvirt defaults it). undefined when the memory cannot be read.
 */
export function domainResources(xml: string): DomainResources | undefined {
  const memory = /<memory(?:\s+unit=['"]([A-Za-z]+)['"])?\s*>\s*([0-9]+)\s*<\/memory>/.exec(xml);
  if (memory === null) return undefined;
  const unitKiB = memoryUnitsKiB[(memory[1] ?? "KiB").toLowerCase()];
  if (unitKiB === undefined) return undefined;
  const vcpu = /<vcpu\b[^>]*>\s*([0-9]+)\s*<\/vcpu>/.exec(xml);
  const memoryKiB = Math.ceil(Number(memory[2]) * unitKiB);
  const vcpus = vcpu === null ? 1 : Number(vcpu[1]);
  return memoryKiB > 0 && vcpus > 0 ? { memoryKiB, vcpus } : undefined;
}
