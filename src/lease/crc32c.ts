/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every lease record:
 * the same one sanlock, ext4 and iSCSI use, with better error detection than CRC32 for the
 * short records here. Slicing-by-8 (eight 256-entry tables, eight bytes a step): every acquire
 * checks a few hundred sectors, and the byte-at-a-time loop was most of its CPU time. The tables
 * are Int32Array so that every value stays a 32-bit integer through the XORs: a Uint32Array's
 * entries above 2^31 are doubles to the JIT, and in the daemons (not in a tight benchmark loop)
 * that kept this function ~10× slower (4 µs a sector, measured in the simulator).
 */
const tables = (() => {
  const t = Array.from({ length: 8 }, () => new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[0]![n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) t[k]![n] = (t[0]![t[k - 1]![n]! & 0xff]! ^ (t[k - 1]![n]! >>> 8)) >>> 0;
  }
  return t;
})();
const [t0, t1, t2, t3, t4, t5, t6, t7] = tables as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

export function crc32c(bytes: Uint8Array): number {
  let crc = -1;
  let i = 0;
  const end8 = bytes.length - (bytes.length % 8);
  for (; i < end8; i += 8) {
    const lo = crc ^ (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24));
    crc =
      t7[lo & 0xff]! ^
      t6[(lo >>> 8) & 0xff]! ^
      t5[(lo >>> 16) & 0xff]! ^
      t4[lo >>> 24]! ^
      t3[bytes[i + 4]!]! ^
      t2[bytes[i + 5]!]! ^
      t1[bytes[i + 6]!]! ^
      t0[bytes[i + 7]!]!;
  }
  for (; i < bytes.length; i++) crc = t0[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}
