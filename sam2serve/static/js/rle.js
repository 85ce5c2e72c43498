// COCO compressed RLE, as the server's format=rle answers carry it.

/** Decode COCO compressed RLE ({size: [h, w], counts}) to a row-major Uint8Array of 0/1. */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const out = new Uint8Array(h * w);
  let idx = 0, v = 0;
  for (const n of counts) {  // runs are column-major (Fortran order)
    if (v) {
      for (let j = idx; j < idx + n; j++) out[(j % h) * w + Math.floor(j / h)] = 1;
    }
    idx += n;
    v = 1 - v;
  }
  return out;
}
