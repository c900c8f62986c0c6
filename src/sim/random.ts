/**
 * The simulator's only source of randomness: a seeded PRNG (sfc32, seeded through splitmix32),
 * so that one seed replays one run exactly. Small and fast on purpose: a run draws a few
 * thousand numbers; cryptographic quality is not needed, reproducibility is.
 */
export class Random {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(readonly seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed ${seed}: a non-negative integer`);
    let state = (seed ^ Math.floor(seed / 2 ** 32)) >>> 0;
    const next = () => {
      state = (state + 0x9e3779b9) >>> 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next();
    // sfc32's first outputs still show the seed; 12 rounds mix it in.
    for (let i = 0; i < 12; i++) this.next();
  }

  /** A uniform float in [0, 1), like Math.random. */
  next(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t / 2 ** 32;
  }

  /** An integer in [min, max], both included. */
  int(min: number, max: number): number {
    if (!(Number.isSafeInteger(min) && Number.isSafeInteger(max) && min <= max)) throw new RangeError(`int(${min}, ${max})`);
    return min + Math.floor(this.next() * (max - min + 1));
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("pick from nothing");
    return items[this.int(0, items.length - 1)]!;
  }

  /** A UUID-shaped string (version 4 layout) from this generator. */
  uuid(): string {
    const hex = (digits: number) => Array.from({ length: digits }, () => this.int(0, 15).toString(16)).join("");
    return `${hex(8)}-${hex(4)}-4${hex(3)}-${(8 + this.int(0, 3)).toString(16)}${hex(3)}-${hex(12)}`;
  }
}
