// decodeRle against masks encoded by pycocotools (the server's encoder).
import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeRle } from "../../sam2serve/static/js/rle.js";

// pycocotools.mask.encode(np.asfortranarray(mask)) of seeded random masks (row-major 0/1)
const RANDOM = [
  { size: [3, 4], counts: "031O000O0", mask: [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0] },
  {
    size: [5, 7], counts: "01121OOO00000112ON004",
    mask: [1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0,
           1, 0, 1, 0, 0, 1, 0],
  },
];

for (const { size, counts, mask } of RANDOM) {
  test(`random ${size[0]}x${size[1]} mask decodes exactly`, () => {
    assert.deepEqual(Array.from(decodeRle({ size, counts })), mask);
  });
}

test("a 300x200 rectangle with a hole (long runs, negative deltas)", () => {
  // mask[50:250, 20:180] = 1; mask[100:120, 60:90] = 0
  const counts = "Rm5X6T3000000000000000000000000000000000000000000000000000000000000000000000000000000ZK`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2`M`M`2`2V20000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000ni5";
  const m = decodeRle({ size: [300, 200], counts });
  const at = (y, x) => m[y * 200 + x];
  let ones = 0;
  for (const v of m) ones += v;
  assert.equal(ones, 200 * 160 - 20 * 30);
  assert.equal(at(50, 20), 1);
  assert.equal(at(249, 179), 1);
  assert.equal(at(49, 20), 0);
  assert.equal(at(50, 19), 0);
  assert.equal(at(250, 179), 0);
  assert.equal(at(100, 60), 0);
  assert.equal(at(119, 89), 0);
  assert.equal(at(120, 89), 1);
});

test("an empty mask", () => {
  assert.deepEqual(Array.from(decodeRle({ size: [2, 3], counts: "6" })), [0, 0, 0, 0, 0, 0]);
});
