import Foundation

/// Parses sizes such as `256M`, `5G`, `1T`, `4096`.
func parseSize(_ s: String) -> UInt64? {
  let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50]
  var t = s.uppercased()
  if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
  guard let last = t.last else { return nil }
  if let m = units[last] {
    guard let v = Double(t.dropLast()), v >= 0 else { return nil }
    return UInt64(v * Double(m))
  }
  return UInt64(t)
}

