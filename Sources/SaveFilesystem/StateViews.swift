import GuestViews
import MigrationFormat

/// The mount's views of CPU and device state, decoded once at mount time:
/// `cpu/N/registers.json` for each vCPU and `devices/NAME[.INSTANCE].json`
/// for each device section (names as ``DeviceState/fileName(name:instance:)``
/// gives them). A file without a VM description has neither directory.
enum StateViews {
  /// The generated files and their paths; costs one read of each device section.
  static func files(_ file: MigrationFile) -> [(path: [String], bytes: [UInt8])] {
    guard file.vmDescription != nil, !file.devices.isEmpty else { return [] }
    var out: [(path: [String], bytes: [UInt8])] = []
    if case .success(let cpus) = file.x86Registers() {
      for c in cpus {
        out.append(([TopLevelName.cpu.rawValue, String(c.cpu), "registers.json"], Array(c.json().utf8)))
      }
    }
    var taken = Set<String>()
    for d in file.deviceStates() {
      var name = d.fileName
      // Two sections with one name and instance would be a damaged stream; keep both, visibly.
      var n = 2
      while taken.contains(name) {
        name = d.fileName.dropLast(".json".count) + "~\(n).json"
        n += 1
      }
      taken.insert(name)
      out.append(([TopLevelName.devices.rawValue, name], Array(d.json().utf8)))
    }
    return out
  }
}
