// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

// Minimal, self-written test helpers so that `forge test` needs no forge-std checkout
// (forge runs offline here). Only what this project's tests use is declared.

/// Subset of forge's cheatcode interface (cheatcode contract at VM_ADDRESS).
interface Vm {
    function prank(address msgSender) external;
    function startPrank(address msgSender) external;
    function stopPrank() external;
    function expectRevert() external;
    function expectRevert(bytes4 revertData) external;
    function expectRevert(bytes calldata revertData) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData, address emitter)
        external;
    function warp(uint256 newTimestamp) external;
    function assume(bool condition) external pure;
    function label(address account, string calldata newLabel) external;
    function addr(uint256 privateKey) external pure returns (address);
}

/// console.log subset: forge decodes calls to this address and prints them with -vv.
library console {
    address internal constant CONSOLE_ADDRESS = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory label, uint256 value) internal view {
        (bool ok,) = CONSOLE_ADDRESS.staticcall(abi.encodeWithSignature("log(string,uint256)", label, value));
        ok;
    }
}

/// Base contract: cheatcode handle and assertion helpers that revert on failure
/// (forge counts a reverting test or invariant function as failed).
abstract contract Test {
    address internal constant VM_ADDRESS = 0x7109709ECfa91a80626fF3989D68f67F5b1DD12D;
    Vm internal constant vm = Vm(VM_ADDRESS);

    error AssertionFailed(string message);
    error AssertionFailedUint(string message, uint256 left, uint256 right);
    error AssertionFailedInt(string message, int256 left, int256 right);
    error AssertionFailedBytes32(string message, bytes32 left, bytes32 right);
    error AssertionFailedAddress(string message, address left, address right);

    function assertTrue(bool cond, string memory message) internal pure {
        if (!cond) revert AssertionFailed(message);
    }

    function assertFalse(bool cond, string memory message) internal pure {
        if (cond) revert AssertionFailed(message);
    }

    function assertEq(uint256 a, uint256 b, string memory message) internal pure {
        if (a != b) revert AssertionFailedUint(message, a, b);
    }

    function assertEq(int256 a, int256 b, string memory message) internal pure {
        if (a != b) revert AssertionFailedInt(message, a, b);
    }

    function assertEq(bytes32 a, bytes32 b, string memory message) internal pure {
        if (a != b) revert AssertionFailedBytes32(message, a, b);
    }

    function assertEq(address a, address b, string memory message) internal pure {
        if (a != b) revert AssertionFailedAddress(message, a, b);
    }

    function assertLe(uint256 a, uint256 b, string memory message) internal pure {
        if (a > b) revert AssertionFailedUint(message, a, b);
    }

    /// Map x into [lo, hi] (inclusive) without discarding fuzz inputs.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (lo == 0 && hi == type(uint256).max) return x;
        return lo + (x % (hi - lo + 1));
    }
}

/// Selector targeting for invariant campaigns (same shape forge reads from forge-std's StdInvariant).
struct FuzzSelector {
    address addr;
    bytes4[] selectors;
}
