/// The limits mramfs puts on values read from a file, in one place.
///
/// No allocation is sized by a file field before the field has been checked
/// against one of these limits or against the file's size.
public enum Limits {
  /// Longest machine type name in the configuration record (QEMU's are under 32 bytes).
  public static let machineNameLength: UInt32 = 256
  /// Most capabilities in the configuration record (QEMU lists at most two).
  public static let capabilityCount: UInt32 = 64
  /// Most RAM blocks in one stream.
  public static let blockCount = 4096
  /// Largest VM description JSON (QEMU's are about 100 KB).
  public static let vmDescriptionBytes: UInt64 = 64 << 20
  /// Deepest nesting accepted in the VM description JSON.
  public static let vmDescriptionDepth = 64
  /// Largest RAM block (64 TiB); a larger claim is treated as damage.
  public static let blockLength: UInt64 = 64 << 40
  /// Largest payload of a COMMAND record that is skipped.
  public static let commandLength: UInt64 = 1 << 16
  /// Largest libvirt XML + cookie area.
  public static let libvirtDataLength: UInt64 = 64 << 20
  /// Most elements of a zero-byte array field decoded from a device section.
  public static let zeroSizeArrayLength: UInt64 = 4096
  /// Most device sections listed from one stream.
  public static let deviceSectionCount = 65536
}
